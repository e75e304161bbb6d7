"""docker-compose.yml and the Dockerfile. There is no Docker engine here or in CI, but compose's own
``config`` command needs none: it validates the file and performs the variable substitution, and the
environment it hands kb is then loaded by the real Settings. ``.ci/run`` installs Debian's docker-compose
for this; where neither it nor the ``docker compose`` plugin exists the test that needs it is skipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kb.settings import Role, Settings

REPO = Path(__file__).resolve().parent.parent
ENV = {"KB_ADMIN_KEY": "admin-0123456789abcdef", "KB_READ_KEY": "read-0123456789abcdef"}


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or Debian's ``docker-compose``: both run ``config`` without an engine."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    command = compose_command()
    assert command is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    return subprocess.run([*command, "config"], cwd=REPO, env={**clean, **env}, capture_output=True, text=True)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_pins_qdrant_with_storage_and_a_health_check(compose: dict) -> None:
    qdrant = compose["services"]["qdrant"]
    image, _, tag = qdrant["image"].partition(":")
    assert image == "qdrant/qdrant" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), "pin an exact Qdrant version"
    assert any(v.endswith(":/qdrant/storage") for v in qdrant["volumes"])
    assert set(compose["volumes"]) >= {v.split(":")[0] for v in qdrant["volumes"]}
    assert qdrant["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.skipif(compose_command() is None, reason="neither docker compose nor docker-compose is installed")
def test_compose_runs_kb_against_that_server_once_it_is_healthy() -> None:
    result = compose_config(ENV)  # compose itself substitutes the variables and validates the file
    assert result.returncode == 0, result.stderr
    kb = yaml.safe_load(result.stdout)["services"]["kb"]
    assert Path(kb["build"]["context"]).resolve() == REPO and (REPO / "Dockerfile").is_file()
    assert kb["depends_on"]["qdrant"]["condition"] == "service_healthy"
    env = {k: str(v) for k, v in kb["environment"].items() if k.startswith("KB_")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings.load()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert settings.qdrant_url == "http://qdrant:6333"
    assert {(k.role, k.key.get_secret_value()) for k in settings.api_keys} == {
        (Role.ADMIN, ENV["KB_ADMIN_KEY"]),
        (Role.READ, ENV["KB_READ_KEY"]),
    }
    assert any(str(v).endswith(":/docs:ro") for v in kb["volumes"])
    refused = compose_config({})  # refuses to start without keys
    assert refused.returncode != 0 and "KB_ADMIN_KEY" in refused.stderr


def test_dockerfile_installs_the_readme_dependency_set_and_serves() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml constraints.txt" in dockerfile
    assert "bash scripts/install.sh" in dockerfile  # the same installer `make demo` runs
    assert '"kb", "serve"' in dockerfile and "HEALTHCHECK" in dockerfile
