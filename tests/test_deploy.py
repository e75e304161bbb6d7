"""docker-compose.yml and the Dockerfile. There is no Docker engine or compose plugin here or in CI, so the
compose file is checked as YAML against what compose requires and what kb needs (``docker compose config``
also runs when the plugin exists); the environment it hands kb is loaded by the real Settings."""

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


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, value)


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


def test_compose_runs_kb_against_that_server_once_it_is_healthy(compose: dict) -> None:
    kb = compose["services"]["kb"]
    assert kb["build"]["context"] == "." and (REPO / "Dockerfile").is_file()
    assert kb["depends_on"]["qdrant"]["condition"] == "service_healthy"
    env = {key: interpolate(str(value), ENV) for key, value in kb["environment"].items()}
    settings_env = {k: v for k, v in env.items() if k.startswith("KB_")}
    old = {k: os.environ.get(k) for k in settings_env}
    os.environ.update(settings_env)
    try:
        settings = Settings.load()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert settings.qdrant_url == "http://qdrant:6333"
    assert {(k.role, k.key) for k in settings.api_keys} == {
        (Role.ADMIN, ENV["KB_ADMIN_KEY"]),
        (Role.READ, ENV["KB_READ_KEY"]),
    }
    with pytest.raises(KeyError, match="KB_ADMIN_KEY"):  # refuses to start without keys
        interpolate(str(kb["environment"]["KB_API_KEYS"]), {})
    assert any(v.endswith(":/docs:ro") for v in kb["volumes"])


def test_dockerfile_installs_the_readme_dependency_set_and_serves() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml constraints.txt" in dockerfile
    assert "bash scripts/install.sh" in dockerfile  # the same installer `make demo` runs
    assert '"kb", "serve"' in dockerfile and "HEALTHCHECK" in dockerfile


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose plugin on this machine (the YAML checks above still ran)",
)
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "config", "-q"], cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
