"""Score-aware fusion of the dense and BM25 legs, and page context, as plain functions over scored lists.

    fused = convex({"dense": dense_hits, "bm25": bm25_hits}, {"dense": 0.7, "bm25": 0.3}, Normalization.MINMAX)
    weights = query_weights(query, dense=0.7, bm25=0.3, exact_boost=2.0)   # more BM25 for "max_wal_senders"
    ranked = with_page_context(fused, doc_of, weight=0.2)
    ranked = with_exact_match(ranked, text_of, named_tokens(query), bonus=0.5)  # chunks naming "max_wal_senders"

Reciprocal-rank fusion only sees ranks: the gap between a dense rank-1 at cosine 0.71 and a rank-2 at 0.52 is
the same as between 0.61 and 0.60, and a BM25 rank-1 bonus outweighs adjacent dense ranks. A convex
combination of *normalised scores* keeps how much better one candidate is (Bruch et al., "An Analysis of
Fusion Functions for Hybrid Retrieval", ACM TOIS 2023). A candidate that one leg did not return gets that
leg's lowest normalised score. Queries that name exact tokens (config keys, error codes, flags, dotted or
snake_case identifiers, quoted phrases) shift weight to BM25, which is what finds them. Page context: a chunk's
score is mixed with the strength of its document among the candidates (the mean of the document's best
chunks), so a section whose own words are thin still ranks when its page is clearly on topic. Exact match: a
chunk that contains the very tokens the query names (``bonjour_name``, ``HV091``) gains a fixed bonus, because
a leg's normalised score cannot say "this is the one chunk that names it": a BM25 rank-1 that the dense leg
did not return at all otherwise falls below chunks both legs find lukewarm.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import lru_cache

import numpy as np

Scored = Sequence[tuple[str, float]]  # (point id, score), best first


class Normalization(StrEnum):
    MINMAX = "minmax"  # (s - min) / (max - min) over the leg's candidates
    ZSCORE = "zscore"  # (s - mean) / std
    DBSF = "dbsf"  # Qdrant's distribution-based: (s - (mean - 3 std)) / 6 std, clipped to [0, 1]


def normalise(scores: np.ndarray, method: Normalization) -> np.ndarray:
    if scores.size == 0:
        return scores
    if method is Normalization.MINMAX:
        low, high = scores.min(), scores.max()
        return (scores - low) / (high - low) if high > low else np.ones_like(scores)
    mean, std = scores.mean(), scores.std()
    if std == 0:
        return np.zeros_like(scores) if method is Normalization.ZSCORE else np.full_like(scores, 0.5)
    if method is Normalization.ZSCORE:
        return (scores - mean) / std
    return np.clip((scores - (mean - 3 * std)) / (6 * std), 0.0, 1.0)


def convex(legs: dict[str, Scored], weights: dict[str, float], method: Normalization) -> list[tuple[str, float]]:
    """Σ weight × normalised score over the legs, best first (ties: by id, so runs are repeatable)."""
    totals: dict[str, float] = defaultdict(float)
    ids = {point for hits in legs.values() for point, _ in hits}
    for name, hits in legs.items():
        weight = weights.get(name, 0.0)
        if not hits or weight == 0.0:
            continue
        values = normalise(np.asarray([s for _, s in hits], dtype=np.float64), method)
        floor = float(values.min())
        given = {point: float(v) for (point, _), v in zip(hits, values, strict=True)}
        for point in ids:
            totals[point] += weight * given.get(point, floor)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


def rrf(legs: dict[str, Scored], weights: dict[str, float], k: int) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion (what Qdrant computes), for comparisons on the same candidates."""
    totals: dict[str, float] = defaultdict(float)
    for name, hits in legs.items():
        for rank, (point, _) in enumerate(hits):
            totals[point] += weights.get(name, 1.0) / (k + rank + 1)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


# Tokens a person types because they are exact: snake_case / dotted / path-like identifiers, flags, SQLSTATE-
# or error-like codes with digits, CamelCase API names, quoted phrases.
_EXACT = re.compile(
    r"""(?x)
    "[^"]{2,}" | `[^`]+`                         # quoted
    | (?<!\w)--?[a-z][\w-]*                      # --flag, -x
    | \b\w+(?:[._/:]|::)\w+(?:(?:[._/:]|::)\w+)*  # billing.retry_limit, os.path, a/b, std::vec
    | \b[a-z]+_[a-z0-9_]+\b                      # max_wal_senders
    | \b[A-Z]+\d+[A-Z0-9]*\b | \b\d+[A-Z]+\w*\b    # E4012, 40P01
    | \b[a-z]+[A-Z]\w*\b                         # camelCase
    """
)


def exact_tokens(query: str) -> list[str]:
    return _EXACT.findall(query)


def query_weights(query: str, dense: float, bm25: float, exact_boost: float) -> dict[str, float]:
    """Leg weights for this query: BM25's weight × ``exact_boost`` when the query names an exact token."""
    if exact_boost != 1.0 and exact_tokens(query):
        bm25 *= exact_boost
    total = dense + bm25
    return {"dense": dense / total, "bm25": bm25 / total} if total else {"dense": 0.5, "bm25": 0.5}


MAX_NAMED_TOKENS = 8  # a real question names one or two; a pasted log naming hundreds must not cost seconds
_TRAILING = "?!.,;:'\")"


def fold(text: str) -> str:
    """Lower case, and NFC where it matters, so ``café_x`` typed composed matches a decomposed document."""
    return text.lower() if text.isascii() else unicodedata.normalize("NFC", text).lower()


def named_tokens(query: str) -> list[str]:
    """The query's exact tokens as a chunk would contain them (:func:`fold`ed, quotes and trailing
    punctuation stripped, 3+ characters, at most :data:`MAX_NAMED_TOKENS`). A quoted phrase counts as a whole
    and so does each exact token inside it: ``"set bonjour_name"`` names both."""
    found: list[str] = []
    for token in exact_tokens(query):
        if token[:1] in '"`' and token[-1:] == token[:1]:
            inner = token[1:-1]
            found += [inner, *(t for t in exact_tokens(inner) if t[:1] not in '"`')]
        else:
            found.append(token)
    tokens = (fold(" ".join(token.split())).rstrip(_TRAILING) for token in found)
    return list(dict.fromkeys(token for token in tokens if len(token) >= 3))[:MAX_NAMED_TOKENS]


@lru_cache(maxsize=1024)
def _token_pattern(token: str) -> re.Pattern[str]:
    # Not inside a longer name: no word character next to it, nor a hyphen leading to one (--dry-run is not in
    # --dry-run-all). A dot, slash or :: does not end the name: sys.stdout.close() names sys.stdout, as a
    # path names its folders. Spaces match any whitespace.
    body = r"\s+".join(re.escape(part) for part in token.split())
    return re.compile(rf"(?<!\w)(?<!\w-){body}(?!\w)(?!-\w)")


def contains_token(text: str, token: str) -> bool:
    """``token`` (from :func:`named_tokens`) occurs in ``text`` (already :func:`fold`ed) as a whole name:
    ``max_wal_senders`` is not in ``max_wal_senders_timeout``."""
    # The substring test first: most candidates do not contain the token at all, and a pattern that opens
    # with lookbehinds gets no fast literal scan from re (3 ms a query over 100 candidates without it).
    return token.split()[0] in text and _token_pattern(token).search(text) is not None


def with_exact_match(
    fused: Scored, text_of: Callable[[str], str], tokens: Sequence[str], bonus: float
) -> list[tuple[str, float]]:
    """Each chunk's score + ``bonus`` × the share of ``tokens`` (:func:`named_tokens`) its text contains,
    best first. No tokens or ``bonus`` 0 leaves the order alone."""
    if not tokens or bonus == 0.0 or not fused:
        return list(fused)
    mixed = []
    for point, score in fused:
        text = fold(text_of(point))
        share = sum(contains_token(text, token) for token in tokens) / len(tokens)
        mixed.append((point, score + bonus * share))
    return sorted(mixed, key=lambda item: (-item[1], item[0]))


def with_page_context(
    fused: Scored, document_of: Callable[[str], str], weight: float, best: int = 3
) -> list[tuple[str, float]]:
    """``(1 − weight) × own score + weight × its document's strength`` (mean of the document's ``best``
    candidates), best first. ``weight`` 0 leaves the order alone."""
    if weight == 0.0 or not fused:
        return list(fused)
    by_doc: dict[str, list[float]] = defaultdict(list)
    for point, score in fused:
        by_doc[document_of(point)].append(score)
    strength = {doc: float(np.mean(sorted(scores, reverse=True)[:best])) for doc, scores in by_doc.items()}
    mixed = [(point, (1 - weight) * score + weight * strength[document_of(point)]) for point, score in fused]
    return sorted(mixed, key=lambda item: (-item[1], item[0]))
