"""Hybrid retrieval: a dense and a BM25 leg, filters and ACL applied inside both, their scores fused.

    >>> from kb import KnowledgeBase
    >>> kb = KnowledgeBase.open("indexes/handbook")               # doctest: +SKIP
    >>> search = kb.hybrid_search(k=5, filters={"product": "billing"})
    >>> result = search.search("E4012")
    >>> for hit in result.hits:
    ...     print(hit.score, hit.record.doc_id, hit.record.heading)
    >>> result.timings                                           # {"embed": 2.1, "retrieve": 1.4} (ms)

``kb.retriever(...)`` is the same search as a LlamaIndex ``BaseRetriever``
(:class:`kb.llamaindex.retriever.HybridRetriever`); this module imports nothing of LlamaIndex.

The fusion default is convex: 0.6 × the dense leg's DBSF-scaled score + 0.4 × BM25's. Rank fusion (the old
default, RRF 3:1) sees only ranks, so a BM25 rank-1 that repeats a prose question's common words beat a clear
dense rank-1; scores keep the size of the lead. A query that names an exact token (``bonjour_name``, ``HV091``)
doubles BM25's weight, and chunks containing those tokens verbatim gain a bonus: the dense leg often never
returns the one chunk that names a parameter, and without it that chunk fell below ones both legs found
lukewarm (evals/reports/fusion-tuning.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kb.acl import Principal
from kb.embedding import Embedder
from kb.fusion import rrf
from kb.records import ChunkRecord
from kb.settings import FusionMethod, RetrievalMode, Settings
from kb.store.base import ChunkStore, FilterValue, HybridQuery, conditions_from


@dataclass(frozen=True)
class RetrievedChunk:
    """One retrieved chunk: its point id, its fused score and its record (text, document, span, ACL…)."""

    node_id: str
    score: float
    record: ChunkRecord


@dataclass
class RetrievalResult:
    """Chunks with their scores, best first, and milliseconds spent per stage (``embed``, ``retrieve``).

    ``relevance`` holds, per chunk, the cosine similarity of its dense vector to the query: unlike fused
    RRF scores (which only encode ranks), it says how close a chunk really is, so floors can use it.
    """

    hits: list[RetrievedChunk]
    timings: dict[str, float] = field(default_factory=dict)
    relevance: list[float] = field(default_factory=list)


class HybridSearch:
    """Hybrid search over a :class:`~kb.store.base.ChunkStore`: embed, run the query plan, fuse.

    ``user`` (a :class:`~kb.acl.Principal`) restricts every leg to the documents it may read.
    ``mode`` picks the legs (hybrid, dense, bm25); ``fusion``, the leg weights and the prefetch depth come
    from :class:`~kb.settings.Settings` unless given here.
    """

    def __init__(
        self,
        store: ChunkStore,
        embedder: Embedder,
        settings: Settings,
        similarity_top_k: int = 5,
        filters: dict[str, FilterValue] | None = None,
        mode: RetrievalMode | str | None = None,
        fusion: FusionMethod | str | None = None,
        user: Principal | None = None,
    ) -> None:
        self.user = user
        self._store = store
        self._embedder = embedder
        self._settings = settings
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        self.mode = RetrievalMode(mode or settings.retrieval_mode)
        self.fusion = FusionMethod(fusion or settings.fusion)

    @property
    def store(self) -> ChunkStore:
        return self._store

    def search(self, query: str, k: int | None = None, with_relevance: bool = False) -> RetrievalResult:
        """Retrieve for ``query`` and report the time spent embedding and querying the store."""
        started = time.perf_counter()
        need_vector = self.mode is not RetrievalMode.BM25 or with_relevance
        dense = self._embedder.embed([query])[0] if need_vector else None
        embedded = time.perf_counter()
        sparse = self._store.bm25.embed_query(query) if self.mode is not RetrievalMode.DENSE else None
        plan = HybridQuery(
            limit=k or self.similarity_top_k,
            dense=dense,
            sparse=sparse,
            conditions=conditions_from(self.filters),
            mode=self.mode,
            fusion=self.fusion,
            weights=(self._settings.dense_weight, self._settings.bm25_weight),
            rrf_k=self._settings.rrf_k,
            prefetch_limit=max(self._settings.prefetch_limit, k or self.similarity_top_k),
            with_vectors=with_relevance,
            readable=self.user.readable() if self.user is not None else None,
            text=query,
            normalization=self._settings.fusion_normalization,
            exact_boost=self._settings.exact_token_boost,
            exact_match=self._settings.exact_match_bonus,
            context_weight=self._settings.context_weight,
        )
        # Ties (equal fused scores are common with RRF) in a stable order: two runs rank the same.
        hits = sorted(self._store.search(plan), key=lambda h: (-h.score, h.id))
        done = time.perf_counter()
        found = [RetrievedChunk(h.id, h.score, ChunkRecord.from_payload(h.payload)) for h in hits]
        relevance = [cosine(dense, h.dense) for h in hits] if with_relevance and dense is not None else []
        timings = {"embed": (embedded - started) * 1e3, "retrieve": (done - embedded) * 1e3}
        return RetrievalResult(found, timings, relevance)

    def legs(self, query: str, k: int = 10) -> LegScores:
        """Each leg's top ``k`` as (document id, score) — dense scores are cosines — for answerability signals
        (one query embedding; both legs filtered and ACL-scoped like :meth:`search`)."""
        dense = self._embedder.embed([query])[0]
        sparse = self._store.bm25.embed_query(query)
        common = dict(
            limit=k, conditions=conditions_from(self.filters), prefetch_limit=k,
            readable=self.user.readable() if self.user is not None else None, text=query,
        )  # fmt: skip
        legs, texts = {}, []
        for mode in (RetrievalMode.DENSE, RetrievalMode.BM25):
            plan = HybridQuery(dense=dense, sparse=sparse, mode=mode, **common)
            hits = sorted(self._store.search(plan), key=lambda h: (-h.score, h.id))
            legs[mode] = [(str(h.payload.get("doc_id", "")), float(h.score)) for h in hits]
            texts += [ChunkRecord.from_payload(h.payload).text for h in hits]
        terms = len(sparse.indices) if sparse is not None else 0
        return LegScores(legs[RetrievalMode.DENSE], legs[RetrievalMode.BM25], terms, texts)

    def search_phrasings(
        self, queries: list[str], k: int | None = None, with_relevance: bool = False
    ) -> RetrievalResult:
        """Retrieve for each phrasing of one question and fuse the rankings (see :func:`fuse_results`)."""
        if len(queries) == 1:
            return self.search(queries[0], k, with_relevance)
        depth = k or self.similarity_top_k
        results = [self.search(q, max(depth, 20), with_relevance) for q in queries]
        return fuse_results(results, depth, self._settings.rrf_k)


@dataclass
class LegScores:
    dense: list[tuple[str, float]]
    bm25: list[tuple[str, float]]
    query_terms: int
    texts: list[str] = field(default_factory=list)  # the chunks both legs found


def fuse_results(results: list[RetrievalResult], k: int, rrf_k: int) -> RetrievalResult:
    """One ranking from the rankings of several phrasings of a question (equal-weight RRF): a chunk that
    ranks well for both the follow-up as typed and its rewrite comes first. Relevance is the best cosine."""
    by_id: dict[str, tuple[RetrievedChunk, float]] = {}
    for result in results:
        relevance = result.relevance or [0.0] * len(result.hits)
        for hit, rel in zip(result.hits, relevance, strict=True):
            known = by_id.get(hit.node_id)
            by_id[hit.node_id] = (hit, max(rel, known[1] if known else rel))
    lists = {str(i): [(h.node_id, h.score) for h in r.hits] for i, r in enumerate(results)}
    fused = rrf(lists, {name: 1.0 for name in lists}, rrf_k)[:k]
    hits = [RetrievedChunk(point, score, by_id[point][0].record) for point, score in fused]
    timings: dict[str, float] = {}
    for result in results:
        for stage, ms in result.timings.items():
            timings[stage] = timings.get(stage, 0.0) + ms
    with_relevance = any(r.relevance for r in results)
    return RetrievalResult(hits, timings, [by_id[p][1] for p, _ in fused] if with_relevance else [])


def __getattr__(name: str) -> Any:
    # kb's LlamaIndex retriever moved to kb.llamaindex (made on demand): old imports keep working.
    if name == "HybridRetriever":
        from kb.llamaindex.retriever import HybridRetriever

        return HybridRetriever
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cosine(query: list[float], vector: list[float] | None) -> float:
    """Cosine similarity of two embeddings from kb's embedder (0 when the vector is missing)."""
    # Both sides are L2-normalised (the embedder normalises, the collection uses cosine), so a dot product.
    return float(sum(a * b for a, b in zip(query, vector, strict=True))) if vector else 0.0
