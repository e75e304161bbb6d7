"""The chunk store: one Qdrant collection, a dense and a BM25 vector per chunk, the chunk in the payload.

:class:`ChunkStore` holds everything a backend needs to know about the schema and the query plan, so both
backends (``kb.store.edge`` for the embedded engine, ``kb.store.server`` for a Qdrant server) behave the same;
they implement the few primitives at the bottom. It imports nothing of LlamaIndex: ``kb search`` starts
without it. Its LlamaIndex face, a ``BasePydanticVectorStore``, is :meth:`ChunkStore.as_vector_store`
(``kb.vector_store``); ``add``, ``delete`` and ``query`` here take LlamaIndex nodes and queries as they are.

The payload of a point is a :class:`kb.records.ChunkRecord` (``to_payload``/``from_payload``): nodes
added through the LlamaIndex interface are mapped onto it too, so they carry an ACL, filterable metadata
and a manifest entry like any ingested document.
"""

from __future__ import annotations

import inspect
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kb.acl import narrowest
from kb.errors import ConfigError
from kb.fusion import Normalization, convex, named_tokens, query_weights, with_exact_match, with_page_context
from kb.records import ChunkRecord, foreign_point_id
from kb.settings import FusionMethod, RetrievalMode
from kb.sparse import Bm25Encoder, SparseVector
from kb.store.lease import NO_LEASE, WriterLease
from kb.store.plan import Leg, QueryPlan, compile_plan

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode, TextNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryResult,
    )

    from kb.manifest import DocumentEntry, ManifestBackend

DENSE, BM25 = "dense", "bm25"  # the vectors' names (kb.store.plan uses the same)
TOP_LEVEL_FIELDS = frozenset({"doc_id", "doc_hash", "source_format", "title", "url", "chunk_index", "source", "path"})
ACL_FIELD = "acl"
# A condition on the point ids themselves (Qdrant's HasId), mapped by each transport's filter. User filter keys
# are field names (see payload_key), so this one cannot collide with them.
POINT_ID = "\x00point_id"
KEYWORD_INDEXES = ("doc_id", "doc_hash", "source_format", "text_hash", "acl", "source")
_INT64 = 2**63

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
    """A query as the retriever asks it; :func:`kb.store.plan.compile_plan` turns it into legs and filters.

    Both legs see the same ``conditions`` (payload key → accepted values) and the caller's ``readable`` ACL.
    ``convex`` fusion (and page context) happen in kb (:mod:`kb.fusion`) over both legs' scored candidates."""

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
    text: str = ""  # the query's words (kb-side fusion reads them: exact tokens shift weight to BM25)
    normalization: str = "minmax"
    exact_boost: float = 1.0
    exact_match: float = 0.0  # bonus for chunks containing the query's exact tokens verbatim
    context_weight: float = 0.0

    def where(self) -> dict[str, list[Any]]:
        """Conditions every leg applies before its limit: the caller's filters and what it may read."""
        if self.readable is None:
            return self.conditions
        return {**self.conditions, ACL_FIELD: list(self.readable) or ["\x00nothing"]}

    def idf_corpus(self) -> dict[str, list[Any]] | None:
        """BM25 IDF statistics over readable chunks only: term rarity in forbidden documents must not show."""
        return None if self.readable is None else {ACL_FIELD: list(self.readable) or ["\x00nothing"]}


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,3}")


def payload_key(key: str) -> str:
    """Payload path of a filter key: built-in fields are top-level, front-matter fields live in ``meta``."""
    if not isinstance(key, str) or not _FIELD_NAME.fullmatch(key):
        raise ConfigError(f"filters: {key!r} is not a field name (letters, digits, '_' and '-', dotted for nesting)")
    return key if key in TOP_LEVEL_FIELDS or key.startswith("meta.") else f"meta.{key}"


def conditions_from(filters: dict[str, FilterValue] | MetadataFilters | None) -> dict[str, list[Any]]:
    """``{"product": "billing", "tags": ["a", "b"]}`` → payload conditions (a list means any of); LlamaIndex
    ``MetadataFilters`` of equality and ``in`` filters joined by AND are accepted too."""
    if filters is None:
        return {}
    if not isinstance(filters, dict) and hasattr(filters, "filters"):
        from llama_index.core.vector_stores.types import FilterOperator, MetadataFilters

        if not isinstance(filters, MetadataFilters):
            raise ConfigError(f"filters: expected an object of field → value(s), got {type(filters).__name__}")
        out: dict[str, list[Any]] = {}
        for item in filters.filters:
            if isinstance(item, MetadataFilters) or item.operator not in (FilterOperator.EQ, FilterOperator.IN):
                raise ConfigError("filters: only equality and 'in' filters joined by AND are supported")
            values = item.value if isinstance(item.value, list) else [item.value]
            out[payload_key(item.key)] = check_filter_values(item.key, list(values))
        return out
    if not isinstance(filters, dict):
        raise ConfigError(f"filters: expected an object of field → value(s), got {type(filters).__name__}")
    conditions: dict[str, list[Any]] = {}
    for key, value in filters.items():
        values = value if isinstance(value, list) else [value]
        conditions[payload_key(key)] = check_filter_values(key, values)
    return conditions


def check_filter_values(key: str, values: list[Any]) -> list[Any]:
    """Values Qdrant can match: strings (valid Unicode), 64-bit integers or booleans, one type per filter."""
    if not values or not all(isinstance(v, (str, int, bool)) for v in values) or len({type(v) for v in values}) > 1:
        raise ConfigError(
            f"filters[{key!r}]: expected a string, number, bool or a non-empty list of one of them, got {values!r}"
        )
    for value in values:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"filters[{key!r}]: the value is not valid Unicode (a lone surrogate)") from None
        elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            raise ConfigError(f"filters[{key!r}]: {value} is outside the 64-bit integer range Qdrant stores")
    return list(values)


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
    return ChunkRecord.from_payload(payload).to_node(point_id)


ForeignAddHook = Callable[[list[tuple[str, ChunkRecord]]], None]


PayloadFetch = Callable[[list[str], list[str] | None], dict[str, dict[str, Any]]]


class StaleCandidates(Exception):
    """A candidate of the legs no longer matches by the time its payload is fetched (a reindex published, or
    its ACL was narrowed, in between): the query runs again with the payloads read by the legs themselves."""


def fuse_in_kb(query: HybridQuery, legs: dict[str, list[ScoredChunk]], payloads: PayloadFetch) -> list[ScoredChunk]:
    """Convex fusion of the legs' normalised scores, with exact-token weights, page context and exact match.

    The legs carry ids and scores only; ``payloads(ids, fields)`` fetches what the fusion reads (``doc_id`` for
    page context, ``text`` for exact match, only when those are on) and then the whole payload of the fused
    top ``limit``: fetching both legs' 50 payloads each took half of a hybrid query's store time. Raises
    :class:`StaleCandidates` when a fetch misses an id, rather than return a short or a mixed ranking."""

    def fetch(ids: list[str], fields: list[str] | None) -> dict[str, dict[str, Any]]:
        found = payloads(ids, fields)
        if len(found) < len(ids):
            raise StaleCandidates
        return found

    scored = {name: [(h.id, h.score) for h in hits] for name, hits in legs.items()}
    candidates = list(dict.fromkeys(point for hits in scored.values() for point, _ in hits))
    weights = query_weights(query.text, query.weights[0], query.weights[1], query.exact_boost)
    fused = convex(scored, weights, Normalization(query.normalization))
    if query.context_weight:
        docs = fetch(candidates, ["doc_id"])
        fused = with_page_context(fused, lambda p: str(docs[p].get("doc_id", "")), query.context_weight)
    tokens = named_tokens(query.text) if query.exact_match else []
    if tokens:
        # Every candidate's text: reading BM25's candidates only lost python-faq tune nDCG@10 0.436 → 0.425 (a
        # dense-only candidate that names `.pyc` verbatim; evals/reports/fusion-tuning.md).
        texts = fetch(candidates, ["text"])
        fused = with_exact_match(fused, lambda p: str(texts[p].get("text", "")), tokens, query.exact_match)
    best = fused[: query.limit]
    full = fetch([point for point, _ in best], None)
    vectors = {h.id: h.dense for hits in legs.values() for h in hits if h.dense is not None}
    return [ScoredChunk(point, score, full[point], vectors.get(point)) for point, score in best]


class ChunkStore(ABC):
    """Qdrant collection of chunks with dense + BM25 vectors and hybrid queries (legs fused by Qdrant or by kb)."""

    stores_text = True  # as LlamaIndex's vector stores say it: the payload holds the chunk's text
    is_embedding_query = True

    def __init__(self, bm25: Bm25Encoder) -> None:
        self._bm25 = bm25
        self._foreign_acl: list[str] | None = None
        self._on_foreign_add: ForeignAddHook | weakref.WeakMethod | None = None
        self._vector_store: BasePydanticVectorStore | None = None

    @property
    def bm25(self) -> Bm25Encoder:
        return self._bm25

    def use_bm25(self, bm25: Bm25Encoder) -> None:
        """Encode with the BM25 parameters the index was built with (read from its state after opening)."""
        self._bm25 = bm25

    # -- LlamaIndex interface -----------------------------------------------------------------------
    def as_vector_store(self) -> BasePydanticVectorStore:
        """This store as a LlamaIndex ``BasePydanticVectorStore`` (made once; LlamaIndex is imported here)."""
        if self._vector_store is None:
            from kb.llamaindex.vector_store import ChunkVectorStore

            self._vector_store = ChunkVectorStore(self)
        return self._vector_store

    @property
    @abstractmethod
    def client(self) -> Any:
        """The backend's own client (the embedded shard, or a ``QdrantClient``)."""

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes that carry an embedding (BM25 is computed from their text here).

        They are filed under the ``nodes`` source with the index's default ACL, their metadata mapped onto
        kb's payload (filterable, shown in hits and citations), and recorded in the manifest."""
        from kb.sources import NODES_SOURCE

        records: list[tuple[str, ChunkRecord]] = []
        source = add_kwargs.get("source", NODES_SOURCE)
        for node in nodes:
            if node.embedding is None:
                raise ValueError(f"node {node.node_id} has no embedding; embed nodes before adding them")
            records.append(ChunkRecord.from_foreign_node(node, source, self._foreign_acl))
        with self.transaction():
            # A node keeps its id (LlamaIndex's own uuid4s) unless that id is a chunk of another document — a
            # node read out of kb and added back, say: it becomes a copy with an id of its own, never an
            # overwrite of that chunk, and no one its ACL hides the chunk from may read the copy, whatever
            # became of the node's metadata on the way.
            taken = self._payloads([point for point, _ in records], {}, ["doc_id", "acl"])
            for i, ((point, record), node) in enumerate(zip(records, nodes, strict=True)):
                original = ChunkRecord.from_payload(taken[point]) if point in taken else None
                if original is not None and original.doc_id != record.doc_id:
                    copy = replace(record, acl=narrowest(record.acl, original.acl))
                    records[i] = (foreign_point_id(f"{source}:{node.node_id}"), copy)
            points = [
                StoredPoint(point_id, list(node.embedding or []), self.bm25_document(record), record.to_payload())
                for (point_id, record), node in zip(records, nodes, strict=True)
            ]
            self.upsert(points)
            self.flush()
            hook = self._on_foreign_add
            if isinstance(hook, weakref.WeakMethod):
                hook = hook()
            if hook is not None:
                hook(records)
        return [p.id for p in points]

    def on_foreign_add(self, hook: ForeignAddHook | None, acl: list[str] | None) -> None:
        """Record nodes added through :meth:`add` (the knowledge base keeps its manifest with this).

        A bound method is held weakly: the store must not keep its knowledge base alive."""
        self._on_foreign_add = weakref.WeakMethod(hook) if inspect.ismethod(hook) else hook  # type: ignore[assignment]
        self._foreign_acl = acl

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        from kb.sources import NODES_SOURCE

        doc_id = ref_doc_id if ":" in ref_doc_id else f"{NODES_SOURCE}:{ref_doc_id}"
        self.delete_documents([doc_id])

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """LlamaIndex query: DEFAULT = dense, SPARSE = BM25, HYBRID = both fused (``fusion`` etc. in kwargs)."""
        from llama_index.core.vector_stores.types import VectorStoreQueryMode, VectorStoreQueryResult

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
            **({"text": query.query_str or ""} | kwargs),  # convex fusion's exact tokens read the words
        )
        hits = self.search(plan)
        return VectorStoreQueryResult(
            nodes=[ChunkRecord.from_payload(h.payload).to_node(h.id) for h in hits],
            similarities=[h.score for h in hits],
            ids=[h.id for h in hits],
        )

    # The async forms LlamaIndex calls (``aretrieve`` on an index over this store): kb's store calls are local
    # and short, so they run inline.
    async def async_add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        return self.add(nodes, **add_kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self.delete(ref_doc_id, **delete_kwargs)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return self.query(query, **kwargs)

    def bm25_document(self, record: ChunkRecord) -> SparseVector:
        """BM25 vector of a chunk (:meth:`ChunkRecord.bm25_text`: its title and heading path count)."""
        return self._bm25.embed_document(record.bm25_text())

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

    def search(self, query: HybridQuery) -> list[ScoredChunk]:
        """Run ``query``: one leg, one Qdrant query fused in the store, or both legs fused by kb."""
        plan = compile_plan(query)
        if not plan.legs:
            return []
        if len(plan.legs) == 1:
            return self._query_leg(plan.legs[0], plan.where, plan.with_vectors)
        if plan.fused_in_store:
            return self._query_fused(plan)
        with self._consistent_read() as by_id:
            legs = dict(zip((leg.name for leg in plan.legs), self._query_legs(plan), strict=True))
            try:
                if by_id is not None:  # nothing was written since the legs ran: their ids still match
                    return fuse_in_kb(query, legs, by_id)
                return fuse_in_kb(query, legs, lambda ids, fields: self._payloads(ids, plan.where, fields))
            except StaleCandidates:
                pass
        # Rare (a write landed between two reads): each leg's payloads come with its own hits, as one read.
        legs = {leg.name: self._query_leg(leg, plan.where, plan.with_vectors) for leg in plan.legs}
        carried = {hit.id: hit.payload for hits in legs.values() for hit in hits}
        return fuse_in_kb(query, legs, lambda ids, fields: {point: carried[point] for point in ids})

    def _consistent_read(self) -> AbstractContextManager[PayloadFetch | None]:
        """Around a query's reads: yields a reader of payloads by id when no write can land in between (the
        embedded engine holds its lock), so they need no filtering again; None otherwise (a server's replicas)."""
        return nullcontext(None)

    def _query_legs(self, plan: QueryPlan) -> list[list[ScoredChunk]]:
        """Each leg's scored ids (no payloads), in the plan's order; a backend may send them as one batch."""
        return [self._query_leg(leg, plan.where, plan.with_vectors, with_payload=False) for leg in plan.legs]

    def _payloads(self, ids: list[str], where: dict[str, list[Any]], fields: list[str] | None) -> dict[str, dict]:
        """Payloads (``fields`` only, or whole) of the points among ``ids`` that still match ``where``: the
        caller's filters and ACL are applied again in the store, so a chunk whose ACL changed after the legs
        ran is not returned."""
        if not ids:
            return {}
        records, _ = self._scroll_page({**where, POINT_ID: list(ids)}, None, len(ids), False, fields or True)
        return {str(record.id): dict(record.payload or {}) for record in records}

    @abstractmethod
    def _query_leg(
        self, leg: Leg, where: dict[str, list[Any]], with_vectors: bool, with_payload: bool = True
    ) -> list[ScoredChunk]:
        """The ``leg.limit`` nearest chunks of one vector, filtered by ``where`` before the limit."""

    @abstractmethod
    def _query_fused(self, plan: QueryPlan) -> list[ScoredChunk]:
        """Both legs as prefetches of one query, fused by Qdrant (RRF, weighted RRF or DBSF)."""

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
        """One write batch (upsert → manifest → delete), ordered against this process's other writes; queries
        see the state before it or after it (embedded engine: they wait; server: the batch publishes at once)."""

    @property
    def lease(self) -> WriterLease:
        """The writer lease (server backend: one writer per collection across hosts); the embedded engine needs
        none (its file lock keeps one writer process)."""
        return NO_LEASE

    def settling(self, documents: dict[str, DocumentEntry]) -> AbstractContextManager[None]:
        """Wraps a sweep of unfinished writes against the manifest's ``documents`` (server: one batch)."""
        return nullcontext()

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
        """Replace a state document atomically and durably."""

    @abstractmethod
    def delete_state(self, name: str) -> None:
        """Remove a state document (durably; nothing when absent)."""

    @abstractmethod
    def manifest_backend(self) -> ManifestBackend:
        """Where this store's manifest lives (see :mod:`kb.manifest`)."""

    @abstractmethod
    def staging(self, dimension: int, bm25: Bm25Encoder) -> ChunkStore:
        """An empty store beside this one for a full rebuild; :meth:`promote` makes it live."""

    @abstractmethod
    def promote(self, staging: ChunkStore) -> None:
        """Serve ``staging`` (complete, state written) from this object; the old points are dropped (server:
        after the grace period, for replicas still reading them).

        Call inside :meth:`transaction` so this process's queries see the old or the new index."""

    @abstractmethod
    def discard(self, staging: ChunkStore) -> None:
        """Drop a staging store that will not be promoted (dry run, failed rebuild)."""

    def describe(self) -> dict[str, Any]:
        """Backend and location, for ``kb status``."""
        return {}

    def disk_bytes(self) -> int:
        return 0
