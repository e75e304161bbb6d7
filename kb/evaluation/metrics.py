"""Ranking and answer metrics, as plain functions over per-question judgements, and paired bootstrap intervals.

A ranking is judged as ``gold_hits``: for each retrieved item, the indices of the gold references it covers
(an empty list for none). A gold counts once however many of its chunks come back, so a chunk of an
already found gold neither adds to nDCG nor to recall; a chunk that covers two golds (nested golds, or two
definitions in one chunk) credits both.

    >>> ranking = [[], [0], [0], [1]]        # 2nd and 3rd items cover gold 0, the 4th covers gold 1
    >>> hit_at(ranking, 1), hit_at(ranking, 3), round(mrr_at(ranking, 10), 3), recall_at(ranking, 3, n_gold=2)
    (0.0, 1.0, 0.5, 0.5)
    >>> round(ndcg_at([[0, 1]], 10, n_gold=2), 3)  # one chunk covering both golds at rank 1: the ideal
    1.0

Relevance itself (which golds a chunk covers) is decided in :mod:`kb.evaluation.gold`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

RANK_CUTOFFS = (1, 3, 5, 10)
Judged = Sequence[Sequence[int]]


def normalise(gold_hits: Sequence[int | Sequence[int]]) -> list[list[int]]:
    """Judgements of either format: lists of gold indices, or the single index (-1: none) of older reports."""
    return [([g] if g >= 0 else []) if isinstance(g, int) else list(g) for g in gold_hits]


def hit_at(gold_hits: Judged, k: int) -> float:
    return float(any(golds for golds in gold_hits[:k]))


def mrr_at(gold_hits: Judged, k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, golds in enumerate(gold_hits[:k]) if golds), 0.0)


def recall_at(gold_hits: Judged, k: int, n_gold: int) -> float:
    return len({g for golds in gold_hits[:k] for g in golds}) / n_gold if n_gold else 0.0


def ndcg_at(gold_hits: Judged, k: int, n_gold: int) -> float:
    """Binary-gain nDCG over golds: an item's gain is the number of golds it finds first (at most the ideal)."""
    seen: set[int] = set()
    dcg = 0.0
    for i, golds in enumerate(gold_hits[:k]):
        new = [g for g in golds if g not in seen]
        seen.update(new)
        dcg += len(new) / math.log2(i + 2)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(n_gold, k)))
    return min(1.0, dcg / ideal) if ideal else 0.0


def ranking_metrics(gold_hits: Sequence[int | Sequence[int]], n_gold: int) -> dict[str, float]:
    judged = normalise(gold_hits)
    out = {f"hit@{k}": hit_at(judged, k) for k in RANK_CUTOFFS}
    out["mrr@10"] = mrr_at(judged, 10)
    out["ndcg@10"] = ndcg_at(judged, 10, n_gold)
    out.update({f"recall@{k}": recall_at(judged, k, n_gold) for k in (5, 10)})
    return out


DOCUMENT_CUTOFFS = (1, 5)


def document_metrics(doc_hits: Sequence[bool]) -> dict[str, float]:
    """Whether one of the top k comes from a gold's document, whatever its section: what a ranking of whole pages
    is judged by (the stock LlamaIndex recipe's 1,024-token nodes are often a whole page), next to kb's sections.

    >>> document_metrics([False, True, True])
    {'doc hit@1': 0.0, 'doc hit@5': 1.0}
    """
    return {f"doc hit@{k}": float(any(doc_hits[:k])) for k in DOCUMENT_CUTOFFS}


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 13, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a − b`` over paired questions and its percentile bootstrap interval (lo, hi).

    The same questions are resampled for both systems, so the interval is that of the *difference*: when it
    excludes 0 the difference is unlikely to be an accident of which questions the set happens to hold."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    if not a:
        return float("nan"), float("nan"), float("nan")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return sum(diffs) / n, means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", re.sub(r"\[\d+\]", " ", text.lower()))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return 0.0
    common: dict[str, int] = {}
    for t in ref:
        common[t] = common.get(t, 0) + 1
    overlap = 0
    for t in pred:
        if common.get(t, 0) > 0:
            overlap += 1
            common[t] -= 1
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on word tokens (longest common subsequence)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)
    for p in pred:
        current = [0]
        for j, r in enumerate(ref, start=1):
            current.append(previous[j - 1] + 1 if p == r else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")

