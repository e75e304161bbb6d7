"""``ChunkVectorStore``: kb's chunk store as a LlamaIndex ``BasePydanticVectorStore``.

    >>> from llama_index.core import VectorStoreIndex
    >>> kb = KnowledgeBase.open("indexes/handbook")                                   # doctest: +SKIP
    >>> index = VectorStoreIndex.from_vector_store(kb.vector_store, embed_model=kb.embed_model)  # doctest: +SKIP
    >>> index.as_retriever(similarity_top_k=3).retrieve("rotate the API key")          # doctest: +SKIP

Nodes added here are filed under the ``nodes`` source with the index's default ACL, their metadata mapped
onto kb's payload and recorded in the manifest (:meth:`kb.store.base.ChunkStore.add`); queries run kb's query
plan, so dense, BM25 (``VectorStoreQueryMode.SPARSE``) and hybrid modes and equality filters all work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQuery, VectorStoreQueryResult
from pydantic import PrivateAttr

from kb.store.base import ChunkStore


class ChunkVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over a :class:`~kb.store.base.ChunkStore` (``kb.vector_store``)."""

    stores_text: bool = True
    is_embedding_query: bool = True
    _chunks: ChunkStore = PrivateAttr()

    def __init__(self, chunks: ChunkStore) -> None:
        super().__init__()
        self._chunks = chunks

    @classmethod
    def class_name(cls) -> str:
        return "ChunkVectorStore"

    @property
    def chunks(self) -> ChunkStore:
        """The kb store behind this face."""
        return self._chunks

    @property
    def client(self) -> Any:
        return self._chunks.client

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        return self._chunks.add(nodes, **add_kwargs)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self._chunks.delete(ref_doc_id, **delete_kwargs)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return self._chunks.query(query, **kwargs)
