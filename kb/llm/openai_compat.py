"""Any OpenAI-compatible chat endpoint: OpenAI, Ollama, vLLM, a llama.cpp server, LM Studio.

    >>> from kb.llm.openai_compat import OpenAICompatibleLLM
    >>> llm = OpenAICompatibleLLM(base_url="http://localhost:11434/v1", model_name="qwen2.5:1.5b")  # doctest: +SKIP
    >>> print(llm.complete("Say hi").text)                                                      # doctest: +SKIP

Speaks ``POST {base_url}/chat/completions`` with ``stream: true`` (server-sent events) over httpx; no
vendor SDK needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
from pydantic import Field

from kb.errors import LLMUnavailableError
from kb.llm.base import ChatBackend

__all__ = ["LLMUnavailableError", "OpenAICompatibleLLM"]


class OpenAICompatibleLLM(ChatBackend):
    base_url: str = Field(description="Endpoint root, e.g. https://api.openai.com/v1")
    api_key: str = Field("", repr=False)
    timeout_s: float = Field(120.0, gt=0)

    def stream_text(self, messages: list[dict[str, str]]) -> Iterator[str]:
        url = self.base_url.rstrip("/") + "/chat/completions"
        body = {
            "model": self.model_name,
            "messages": messages,
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=self.timeout_s) as response:
                if response.status_code >= 400:
                    detail = response.read().decode("utf-8", "replace")[:300]
                    raise LLMUnavailableError(f"LLM endpoint {url} answered {response.status_code}: {detail}")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        choice = json.loads(data)["choices"][0]
                    except (json.JSONDecodeError, KeyError, IndexError) as exc:
                        raise LLMUnavailableError(f"LLM endpoint {url} sent an unreadable event: {data[:200]}") from exc
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        yield piece
        except httpx.HTTPError as exc:
            raise LLMUnavailableError(
                f"cannot reach the LLM endpoint {url} ({exc.__class__.__name__}: {exc}); check llm_base_url, "
                'or set llm_backend = "extractive" to answer without a generator'
            ) from exc
