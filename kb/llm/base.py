"""Shared plumbing for kb's generators: each backend streams text for a list of chat messages, and this
base class turns that into LlamaIndex's ``LLM`` interface (chat, stream_chat, complete, stream_complete),
so kb's query engine also accepts any LlamaIndex LLM a user already has."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from pydantic import Field


class ChatBackend(CustomLLM):
    """A chat model that streams plain text; subclasses implement :meth:`stream_text`."""

    model_name: str = Field(description="Model identity shown in answers and reports.")
    max_tokens: int = Field(320, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    context_window: int = Field(4096, ge=256)

    @abstractmethod
    def stream_text(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Yield pieces of the assistant's reply to ``messages`` (``{"role", "content"}`` dicts)."""

    def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` in the model's own vocabulary, where the backend can tell (None: unknown)."""
        return None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens,
            is_chat_model=True,
            model_name=self.model_name,
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        plain = [{"role": m.role.value, "content": m.content or ""} for m in messages]

        def gen() -> ChatResponseGen:
            text = ""
            for piece in self.stream_text(plain):
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        final = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=""))
        for response in self.stream_chat(messages, **kwargs):
            final = response
        return final

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            text = ""
            for piece in self.stream_text([{"role": "user", "content": prompt}]):
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = "".join(self.stream_text([{"role": "user", "content": prompt}]))
        return CompletionResponse(text=text)
