"""Real documentation from Debian packages: ``apt-get download`` + ``dpkg-deb -x`` (no root install)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kb.errors import KbError


def fetch_debian_package(package: str, workdir: Path) -> tuple[Path, str]:
    """Download and extract ``package`` under ``workdir`` once; returns (extracted root, package version)."""
    workdir.mkdir(parents=True, exist_ok=True)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        try:
            subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise KbError(
                f"cannot download Debian package {package} ({detail.strip()}); run 'apt-get update' first"
            ) from exc
        debs = sorted(workdir.glob(f"{package}_*.deb"))
    deb = debs[-1]
    target = workdir / package
    if not target.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return target, deb.name.split("_")[1].replace("%3a", ":")
