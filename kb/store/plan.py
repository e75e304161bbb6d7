"""The query plan: legs, filters, ACL, fusion — compiled once from a :class:`HybridQuery`, then sent by a backend.

    plan = compile_plan(query)
    plan.legs            # (Leg("dense", vector, 50), Leg("bm25", sparse, 50, idf_corpus=...))
    plan.fused_in_store  # True: one prefetch query fused by Qdrant (RRF, DBSF); False: legs fused by kb.fusion

Both backends (the embedded engine, a Qdrant server) translate the same plan into their own request types;
what a leg filters on — the caller's filters *and* what the caller may read — is decided here, once, so a
backend cannot forget the ACL in one leg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kb.settings import FusionMethod, RetrievalMode

if TYPE_CHECKING:
    from kb.sparse import SparseVector
    from kb.store.base import HybridQuery

DENSE = "dense"
BM25 = "bm25"
# Fusions Qdrant computes inside one query; the others need both legs' scored lists (kb.fusion).
IN_STORE = frozenset({FusionMethod.RRF, FusionMethod.WEIGHTED, FusionMethod.DBSF})


@dataclass(frozen=True)
class Leg:
    """One nearest-neighbour search: which vector, the query vector, how many candidates."""

    name: str
    vector: list[float] | SparseVector
    limit: int
    idf_corpus: dict[str, list[Any]] | None = None  # BM25 statistics over these chunks (the readable ones)


@dataclass(frozen=True)
class QueryPlan:
    legs: tuple[Leg, ...]
    where: dict[str, list[Any]]  # applied by every leg before its limit, and by the fused stage
    limit: int
    fusion: FusionMethod
    weights: tuple[float, float]
    rrf_k: int
    with_vectors: bool

    @property
    def fused_in_store(self) -> bool:
        return len(self.legs) > 1 and self.fusion in IN_STORE

    def fusion_weights(self) -> list[float] | None:
        return list(self.weights) if self.fusion is FusionMethod.WEIGHTED else None


def compile_plan(query: HybridQuery) -> QueryPlan:
    """The legs a query runs (a leg without a query vector is left out) and what each filters on."""
    legs: list[Leg] = []
    single = query.mode is not RetrievalMode.HYBRID
    depth = query.limit if single else query.prefetch_limit
    if query.mode is not RetrievalMode.BM25 and query.dense is not None:
        legs.append(Leg(DENSE, query.dense, depth))
    if query.mode is not RetrievalMode.DENSE and query.sparse is not None and query.sparse.indices:
        legs.append(Leg(BM25, query.sparse, depth, query.idf_corpus()))
    if len(legs) == 1:
        legs[0] = Leg(legs[0].name, legs[0].vector, query.limit, legs[0].idf_corpus)
    return QueryPlan(
        tuple(legs), query.where(), query.limit, query.fusion, query.weights, query.rrf_k, query.with_vectors
    )
