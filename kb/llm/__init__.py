"""Generators for answers, chosen by ``Settings.llm_backend``.

>>> from kb.llm import build_llm
>>> from kb.settings import Settings
>>> build_llm(Settings(llm_backend="extractive")) is None    # extractive: no generator at all
True
"""

from __future__ import annotations

import os
from collections.abc import Callable

from llama_index.core.llms import LLM

from kb.errors import ConfigError
from kb.llm.local import LlamaCppLLM, default_gguf, llama_cpp_available, qwen_parts_available
from kb.llm.openai_compat import OpenAICompatibleLLM
from kb.settings import LlmBackend, Settings


def _local(settings: Settings) -> LLM:
    path = settings.llm_model_path or str(default_gguf())
    name = os.path.basename(path) if settings.llm_model_path else "Qwen2.5-Coder-1.5B-Instruct Q4_K_M"
    return LlamaCppLLM(
        model_path=path,
        model_name=name,
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        context_window=settings.llm_context_window,
    )


def _openai(settings: Settings) -> LLM:
    if not settings.llm_model:
        raise ConfigError("llm_model: the openai backend needs the model name the endpoint serves (KB_LLM_MODEL)")
    return OpenAICompatibleLLM(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key.get_secret_value() or os.environ.get("OPENAI_API_KEY", ""),
        model_name=settings.llm_model,
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        context_window=settings.llm_context_window,
    )


def _auto(settings: Settings) -> LLM | None:
    if llama_cpp_available() and (settings.llm_model_path or qwen_parts_available()):
        return _local(settings)
    return None


_BACKENDS: dict[LlmBackend, Callable[[Settings], LLM | None]] = {
    LlmBackend.AUTO: _auto,
    LlmBackend.LOCAL: _local,
    LlmBackend.OPENAI: _openai,
    LlmBackend.EXTRACTIVE: lambda _settings: None,
}


def build_llm(settings: Settings) -> LLM | None:
    """The generator the settings name, or ``None`` for extractive answers."""
    return _BACKENDS[settings.llm_backend](settings)
