"""The chunk store: one Qdrant collection, a dense and a BM25 vector per chunk, the chunk in the payload.

:class:`ChunkStore` is a LlamaIndex ``BasePydanticVectorStore``; backends (``kb.store.edge`` for the
embedded engine) implement the few primitives at the bottom. Everything a backend needs to know about
the schema and the query plan lives here, so both backends behave the same.

Payload of a point: ``text``, ``doc_id``, ``doc_hash``, ``chunk_index``, ``title``, ``header_path`` (list),
``span`` ([start, end, first line, last line]), ``source_format``, ``url`` and ``meta`` (front matter).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.schema import BaseNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from kb.errors import ConfigError
from kb.settings import FusionMethod, RetrievalMode
from kb.sparse import Bm25Encoder, SparseVector

DENSE = "dense"
BM25 = "bm25"
TOP_LEVEL_FIELDS = frozenset({"doc_id", "doc_hash", "source_format", "title", "url", "chunk_index"})
ACL_FIELD = "acl"
KEYWORD_INDEXES = ("doc_id", "doc_hash", "source_format", "text_hash", "acl")

FilterValue = str | int | bool | list[str] | list[int]


@dataclass
class StoredPoint:
    id: str
    dense: list[float]
    sparse: SparseVector
    payload: dict[str, Any]


@dataclass
class ScoredChunk:
    id: str
    score: float
    payload: dict[str, Any]
    dense: list[float] | None = None  # only when the query asked for vectors


@dataclass
class HybridQuery:
    """One query plan; both legs see the same ``conditions`` (payload key → accepted values)."""

    limit: int
    dense: list[float] | None = None
    sparse: SparseVector | None = None
    conditions: dict[str, list[Any]] = field(default_factory=dict)
    mode: RetrievalMode = RetrievalMode.HYBRID
    fusion: FusionMethod = FusionMethod.WEIGHTED
    weights: tuple[float, float] = (1.0, 1.0)
    rrf_k: int = 60
    prefetch_limit: int = 50
    with_vectors: bool = False
    readable: list[str] | None = None  # ACL values the caller may read; None = everything

    def where(self) -> dict[str, list[Any]]:
        """Conditions every leg applies before its limit: the caller's filters and what it may read."""
        if self.readable is None:
            return self.conditions
        return {**self.conditions, ACL_FIELD: list(self.readable) or ["\x00nothing"]}

    def idf_corpus(self) -> dict[str, list[Any]] | None:
        """BM25 IDF statistics over readable chunks only: term rarity in forbidden documents must not show."""
        return None if self.readable is None else {ACL_FIELD: list(self.readable) or ["\x00nothing"]}

    def fusion_weights(self) -> list[float] | None:
        return list(self.weights) if self.fusion is FusionMethod.WEIGHTED else None


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,3}")


def payload_key(key: str) -> str:
    """Payload path of a filter key: built-in fields are top-level, front-matter fields live in ``meta``."""
    if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key):
        raise ConfigError(f"filters: {key!r} is not a field name (letters, digits, '_' and '-', dotted for nesting)")
    return key if key in TOP_LEVEL_FIELDS or key.startswith("meta.") else f"meta.{key}"


def conditions_from(filters: dict[str, FilterValue] | MetadataFilters | None) -> dict[str, list[Any]]:
    """``{"product": "billing", "tags": ["a", "b"]}`` → payload conditions (a list means any of)."""
    if filters is None:
        return {}
    if isinstance(filters, MetadataFilters):
        out: dict[str, list[Any]] = {}
        for item in filters.filters:
            if isinstance(item, MetadataFilters) or item.operator not in (FilterOperator.EQ, FilterOperator.IN):
                raise ConfigError("filters: only equality and 'in' filters joined by AND are supported")
            values = item.value if isinstance(item.value, list) else [item.value]
            out[payload_key(item.key)] = list(values)
        return out
    conditions: dict[str, list[Any]] = {}
    for key, value in filters.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, bool)) for v in values) or len({type(v) for v in values}) > 1:
            raise ConfigError(
                f"filters[{key!r}]: expected a string, number, bool or a non-empty list of one of them, got {value!r}"
            )
        conditions[payload_key(key)] = list(values)
    return conditions


def stored_point(point_id: Any, vectors: Any, payload: Any) -> StoredPoint:
    """A scrolled record (either backend: dense list + sparse object with indices/values) as a StoredPoint."""
    vectors = vectors or {}
    sparse = vectors.get(BM25)
    return StoredPoint(
        str(point_id),
        list(vectors.get(DENSE) or []),
        SparseVector(list(sparse.indices), list(sparse.values)) if sparse is not None else SparseVector([], []),
        dict(payload or {}),
    )


def dense_vector(vectors: Any) -> list[float] | None:
    """The dense vector of a record's named vectors (either backend), if it was asked for."""
    if isinstance(vectors, dict):
        value = vectors.get(DENSE)
        return list(value) if value is not None else None
    return None


def node_from_payload(point_id: str, payload: dict[str, Any]) -> TextNode:
    node = TextNode(
        id_=point_id, text=payload.get("text", ""), metadata={k: v for k, v in payload.items() if k != "text"}
    )
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=payload.get("doc_id", ""))
    return node


class ChunkStore(BasePydanticVectorStore):
    """Qdrant collection of chunks with dense + BM25 vectors and hybrid queries fused inside Qdrant."""

    stores_text: bool = True
    is_embedding_query: bool = True
    _bm25: Bm25Encoder = PrivateAttr()

    def __init__(self, bm25: Bm25Encoder, **data: Any) -> None:
        super().__init__(**data)
        self._bm25 = bm25

    @property
    def bm25(self) -> Bm25Encoder:
        return self._bm25

    def use_bm25(self, bm25: Bm25Encoder) -> None:
        """Encode with the BM25 parameters the index was built with (read from its state after opening)."""
        self._bm25 = bm25

    # -- LlamaIndex interface -----------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes that carry an embedding; the BM25 vector is computed from their text here."""
        points = []
        for node in nodes:
            if node.embedding is None:
                raise ValueError(f"node {node.node_id} has no embedding; embed nodes before adding them")
            payload = {**node.metadata, "text": node.get_content()}
            payload.setdefault("doc_id", node.ref_doc_id or node.node_id)
            points.append(StoredPoint(node.node_id, node.embedding, self.bm25_document(payload), payload))
        self.upsert(points)
        return [p.id for p in points]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self.delete_documents([ref_doc_id])

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """LlamaIndex query: DEFAULT = dense, SPARSE = BM25, HYBRID = both fused (``fusion`` etc. in kwargs)."""
        mode = {
            VectorStoreQueryMode.SPARSE: RetrievalMode.BM25,
            VectorStoreQueryMode.HYBRID: RetrievalMode.HYBRID,
        }.get(query.mode, RetrievalMode.DENSE)
        plan = HybridQuery(
            limit=query.similarity_top_k,
            dense=query.query_embedding,
            sparse=self._bm25.embed_query(query.query_str)
            if query.query_str and mode is not RetrievalMode.DENSE
            else None,
            conditions=conditions_from(query.filters),
            mode=mode,
            **kwargs,
        )
        hits = self.search(plan)
        return VectorStoreQueryResult(
            nodes=[node_from_payload(h.id, h.payload) for h in hits],
            similarities=[h.score for h in hits],
            ids=[h.id for h in hits],
        )

    def bm25_document(self, payload: dict[str, Any]) -> SparseVector:
        """BM25 vector of a chunk: its heading path and title count as words of the chunk."""
        headings = " ".join(payload.get("header_path") or [])
        return self._bm25.embed_document(f"{payload.get('title', '')}\n{headings}\n{payload.get('text', '')}")

    # -- backend primitives -------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, points: list[StoredPoint]) -> None: ...

    @abstractmethod
    def delete_documents(self, doc_ids: list[str]) -> None: ...

    @abstractmethod
    def set_acl(self, doc_id: str, acl: list[str]) -> None:
        """Replace the ``acl`` payload of every chunk of ``doc_id`` (an ACL-only change: no re-embedding)."""

    @abstractmethod
    def delete_version(self, doc_id: str, doc_hash: str) -> None:
        """Delete the chunks of one version of one document (never another document with equal content)."""

    @abstractmethod
    def search(self, plan: HybridQuery) -> list[ScoredChunk]: ...

    def vectors_by_text_hash(self, text_hashes: list[str]) -> dict[str, list[float]]:
        """Stored dense vectors of chunks whose embedded text has one of these hashes (the embedding cache)."""
        out: dict[str, list[float]] = {}
        for start in range(0, len(text_hashes), 512):
            wanted = {"text_hash": text_hashes[start : start + 512]}
            for record in self._scroll(wanted, vectors=[DENSE], payload=["text_hash"]):
                vector = dense_vector(record.vector)
                if vector is not None:
                    out[record.payload["text_hash"]] = vector
        return out

    def versions(self) -> dict[tuple[str, str], int]:
        """Point count per (doc_id, doc_hash) stored."""
        counts: dict[tuple[str, str], int] = {}
        for record in self._scroll({}, payload=["doc_id", "doc_hash"], batch=2048):
            key = (record.payload.get("doc_id", ""), record.payload.get("doc_hash", ""))
            counts[key] = counts.get(key, 0) + 1
        return counts

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Hold off this process's other store calls until the block ends (queries see before or after)."""

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def count(self, conditions: dict[str, list[Any]] | None = None) -> int: ...

    def scroll(self, conditions: dict[str, list[Any]] | None = None, batch: int = 256) -> Iterator[ScoredChunk]:
        """Every point (score 0) matching ``conditions``, with payload."""
        for record in self._scroll(conditions or {}, batch=batch):
            yield ScoredChunk(str(record.id), 0.0, dict(record.payload or {}))

    def scroll_points(self, batch: int = 256) -> Iterator[StoredPoint]:
        """Every point with both vectors and payload (``kb migrate`` copies them without re-embedding)."""
        for record in self._scroll({}, vectors=True, batch=batch):
            yield stored_point(record.id, record.vector, record.payload)

    def _scroll(
        self, conditions: dict[str, list[Any]], vectors: Any = False, payload: Any = True, batch: int = 256
    ) -> Iterator[Any]:
        offset = None
        while True:
            records, offset = self._scroll_page(conditions, offset, batch, vectors, payload)
            yield from records
            if offset is None:
                return

    @abstractmethod
    def _scroll_page(
        self, conditions: dict[str, list[Any]], offset: Any, limit: int, vectors: Any, payload: Any
    ) -> tuple[list[Any], Any]:
        """One page of records (``.id``, ``.vector``, ``.payload``) and the offset of the next, or None."""

    @abstractmethod
    def ensure_payload_indexes(self, meta_fields: list[str]) -> None: ...

    @abstractmethod
    def optimize(self) -> None:
        """Merge segments and build the HNSW index after bulk writes."""

    @abstractmethod
    def close(self) -> None: ...

    # -- index state and full rebuilds ---------------------------------------------------------------
    @abstractmethod
    def read_state(self, name: str) -> dict[str, Any] | None:
        """A JSON document kept next to the points (``index.json``, ``manifest.json``), or ``None``."""

    @abstractmethod
    def write_state(self, name: str, data: dict[str, Any]) -> None:
        """Replace a state document atomically."""

    @abstractmethod
    def staging(self, dimension: int, bm25: Bm25Encoder) -> ChunkStore:
        """An empty store beside this one for a full rebuild; :meth:`promote` makes it live."""

    @abstractmethod
    def promote(self, staging: ChunkStore) -> None:
        """Serve ``staging`` (complete, state written) from this object and drop the old points.

        Call inside :meth:`transaction` so this process's queries see the old or the new index."""

    @abstractmethod
    def discard(self, staging: ChunkStore) -> None:
        """Drop a staging store that will not be promoted (dry run, failed rebuild)."""

    def describe(self) -> dict[str, Any]:
        """Backend and location, for ``kb status``."""
        return {}

    def disk_bytes(self) -> int:
        return 0
