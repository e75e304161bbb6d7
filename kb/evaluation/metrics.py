"""Ranking and answer metrics, as plain functions over per-question judgements.

A ranking is judged as ``gold_hits``: for each retrieved item, the index of the gold reference it overlaps
(-1 for none). A gold section counts once however many of its chunks come back, so a chunk of an already
found section neither adds to nDCG nor to recall.

    >>> ranking = [-1, 0, 0, 1]        # 2nd and 3rd items hit gold 0, the 4th hits gold 1
    >>> hit_at(ranking, 1), hit_at(ranking, 3), round(mrr_at(ranking, 10), 3), recall_at(ranking, 3, n_gold=2)
    (0.0, 1.0, 0.5, 0.5)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

RANK_CUTOFFS = (1, 3, 5, 10)


def hit_at(gold_hits: Sequence[int], k: int) -> float:
    return float(any(g >= 0 for g in gold_hits[:k]))


def mrr_at(gold_hits: Sequence[int], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, g in enumerate(gold_hits[:k]) if g >= 0), 0.0)


def recall_at(gold_hits: Sequence[int], k: int, n_gold: int) -> float:
    return len({g for g in gold_hits[:k] if g >= 0}) / n_gold if n_gold else 0.0


def ndcg_at(gold_hits: Sequence[int], k: int, n_gold: int) -> float:
    seen: set[int] = set()
    dcg = 0.0
    for i, g in enumerate(gold_hits[:k]):
        if g >= 0 and g not in seen:
            seen.add(g)
            dcg += 1.0 / math.log2(i + 2)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(n_gold, k)))
    return dcg / ideal if ideal else 0.0


def ranking_metrics(gold_hits: Sequence[int], n_gold: int) -> dict[str, float]:
    out = {f"hit@{k}": hit_at(gold_hits, k) for k in RANK_CUTOFFS}
    out["mrr@10"] = mrr_at(gold_hits, 10)
    out["ndcg@10"] = ndcg_at(gold_hits, 10, n_gold)
    out.update({f"recall@{k}": recall_at(gold_hits, k, n_gold) for k in (5, 10)})
    return out


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
