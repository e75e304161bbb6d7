"""``EmbeddingModel``: any kb embedder as a LlamaIndex ``BaseEmbedding``.

    >>> from kb.embedding import build_embedder
    >>> model = EmbeddingModel(build_embedder("all-MiniLM-L6-v2", "onnx"))
    >>> len(model.get_query_embedding("rotate the API key"))
    384

``kb.embed_model`` is the index's own embedder in this face: hand it to a ``VectorStoreIndex`` over
``kb.vector_store`` so queries are embedded as the chunks were.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from kb.embedding import Embedder


class EmbeddingModel(BaseEmbedding):
    """A LlamaIndex embedding model over a kb :class:`~kb.embedding.Embedder` (same vectors, same batching)."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder, **data: Any) -> None:
        super().__init__(model_name=embedder.model_name, embed_batch_size=embedder.embed_batch_size, **data)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "KbEmbeddingModel"

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed(texts)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
