"""Shared fixtures. Everything here is real: the bundled MiniLM model, the embedded Qdrant engine, files
on disk. The sample index is built once per session because loading the model dominates."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase, Settings
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
FULL_PROFILE = os.environ.get("KB_TEST_PROFILE") == "full"  # CI: every case; `make test`: a fast sample
SAMPLE_QUESTIONS = REPO / "evals" / "sets" / "sample.jsonl"


@pytest.fixture(autouse=True)
def _clean_kb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's KB_* variables must not change what the tests see.
    for key in list(os.environ):
        if key.startswith("KB_"):
            monkeypatch.delenv(key)


# Both store backends. "qdrant-client" is qdrant-client's local mode: the same client API and collection
# schema a Qdrant server gets, and the only server stand-in that installs here (no Docker engine and no
# Qdrant binary on this machine or in CI). What only a real server does (sharding, replication, its own
# durability) is not covered by these tests.
BACKENDS = {"edge": {}, "qdrant-client": {"qdrant_url": "local"}}


@pytest.fixture(params=list(BACKENDS), scope="session")
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings overrides that select one store backend."""
    return BACKENDS[request.param]


@pytest.fixture(scope="session")
def backend_kb(backend: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    """The sample corpus ingested into each store backend in turn."""
    kb = KnowledgeBase.open(tmp_path_factory.mktemp("sample-backend") / "index", Settings(**backend))
    kb.ingest(sample_kb_path())
    yield kb
    kb.close()


@pytest.fixture(scope="session")
def sample_kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    """The bundled sample corpus, ingested once into a fresh embedded index."""
    kb = KnowledgeBase.open(tmp_path_factory.mktemp("sample") / "index", Settings())
    kb.ingest(sample_kb_path())
    yield kb
    kb.close()


@pytest.fixture(scope="session")
def sample_questions() -> list[dict]:
    return [json.loads(line) for line in SAMPLE_QUESTIONS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def other_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, loadable model that differs from MiniLM: the same files with one weight nudged."""
    from safetensors.torch import load_file, save_file

    from kb.embedding import resolve_model_path

    source = resolve_model_path("all-MiniLM-L6-v2")
    target = tmp_path_factory.mktemp("other-model")
    shutil.copytree(source, target, dirs_exist_ok=True)
    weights = load_file(str(source / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] * 1.01
    save_file(weights, str(target / "model.safetensors"))
    return target


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path
