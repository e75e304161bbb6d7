"""kb's parts as LlamaIndex components, made on demand so that kb's own paths never import LlamaIndex.

    from llama_index.core import VectorStoreIndex
    index = VectorStoreIndex.from_vector_store(kb.vector_store, embed_model=kb.embed_model)
    nodes = kb.retriever(k=5).retrieve("E4012")          # HybridRetriever, a BaseRetriever
    parser = HeadingNodeParser.for_model("all-MiniLM-L6-v2")  # a NodeParser

Each face wraps a kb part that imports nothing of LlamaIndex:

- :class:`~kb.llamaindex.vector_store.ChunkVectorStore` (``kb.vector_store``), a ``BasePydanticVectorStore``
  over :class:`kb.store.base.ChunkStore`;
- :class:`~kb.llamaindex.retriever.HybridRetriever` (``kb.retriever()``), a ``BaseRetriever`` over
  :class:`kb.retrieval.HybridSearch`;
- :class:`~kb.llamaindex.embedding.EmbeddingModel` (``kb.embed_model``), a ``BaseEmbedding`` over any
  :class:`kb.embedding.Embedder`;
- :class:`~kb.llamaindex.node_parser.HeadingNodeParser`, a ``NodeParser`` over :class:`kb.chunking.HeadingChunker`;
- :class:`~kb.llamaindex.query_engine.CitedQueryEngine` (``kb.query_engine()``), a ``BaseQueryEngine`` over
  :class:`kb.answering.AnswerEngine`.

Importing ``llama_index.core`` takes about a second (its package builds some 290 pydantic models and imports
every index and chat engine); ``kb search`` from a cold start takes less than that in all. The cross-encoder
(``kb.reranking``) and the generators (``kb.llm``) are LlamaIndex components themselves and load only with
the answer path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ChunkVectorStore", "CitedQueryEngine", "EmbeddingModel", "HeadingNodeParser", "HybridRetriever"]

_HOMES = {
    "ChunkVectorStore": "kb.llamaindex.vector_store",
    "CitedQueryEngine": "kb.llamaindex.query_engine",
    "EmbeddingModel": "kb.llamaindex.embedding",
    "HeadingNodeParser": "kb.llamaindex.node_parser",
    "HybridRetriever": "kb.llamaindex.retriever",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
