"""``kb tune``, stage 4: the tuned reranker against kb's fused ranking, on held-out questions.

    logits, ms = score_heldout(reranker, heldout, tune / "heldout-scores.jsonl", model_id)  # resumable
    result = gate(heldout, logits, GateThresholds(min_gain=0.03), latencies_ms=ms)
    result.passed, result.reason, result.blend

The held-out questions come from chunks never trained on; each holds the fused top ``reranker_candidates``
that kb would hand the reranker at query time, with their fused scores. The reranked order is the one kb
serves, :func:`kb.reranking.blend_scores` (``blend`` × z(logit) + (1 − ``blend``) × z(fused)), for each blend
in ``BLENDS`` (blend 0 is the fused order itself); the blend with the best nDCG@10 (among those that keep
hit@3) is chosen, and the model is installed only if at that blend nDCG@10 ≥ fused + ``min_gain`` and hit@3
is not lower (by more than ``max_hit3_drop``). The blend is chosen on the same questions the gate reads,
which flatters the reranker a little (the best of ``len(BLENDS)`` tries): the report says so, with a paired
bootstrap interval of the gain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb.evaluation.metrics import hit_at, mrr_at, ndcg_at, paired_bootstrap, percentile
from kb.reranking import blend_scores
from kb.tuning.files import LineWriter, read_lines
from kb.tuning.negatives import Mined

SCORES_FILE = "heldout-scores.jsonl"
MIN_GAIN = 0.03  # nDCG@10 over fused that a tuned reranker must add to be installed (issue 15)
BLENDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class GateThresholds:
    min_gain: float = MIN_GAIN
    max_hit3_drop: float = 0.0
    min_questions: int = 1  # fewer held-out questions than this: no verdict, not installed


@dataclass
class Figures:
    """Mean ranking figures over the held-out questions (the positive chunk is the one relevant item)."""

    ndcg10: float
    hit1: float
    hit3: float
    mrr10: float

    def row(self) -> str:
        return f"{self.ndcg10:.3f} | {self.hit1:.3f} | {self.hit3:.3f} | {self.mrr10:.3f}"


@dataclass
class GateResult:
    questions: int
    fused: Figures
    blends: dict[str, Figures]  # "0.5" → figures of that blend
    blend: float  # the chosen one
    reranked: Figures  # the figures at the chosen blend
    gain: float  # reranked − fused nDCG@10
    gain_interval: list[float]  # paired bootstrap 95% interval of the gain
    passed: bool
    reason: str
    latency_ms_p50: float | None = None  # the ONNX model on the held-out candidate lists
    candidates: float = 0.0  # mean candidates per held-out question
    positive_retrieved: float = 0.0  # share of held-out questions whose positive is in the candidates
    thresholds: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        data = dict(data)
        data["fused"] = Figures(**data["fused"])
        data["reranked"] = Figures(**data["reranked"])
        data["blends"] = {k: Figures(**v) for k, v in data["blends"].items()}
        return cls(**data)


def rank_figures(order: np.ndarray, gold: Sequence[int]) -> dict[str, float]:
    """The figures of one ranking (candidate indices, best first) given the gold candidate indices."""
    golds = set(gold)
    judged = [[0] if int(i) in golds else [] for i in order]
    return {"ndcg10": ndcg_at(judged, 10, 1), "hit1": hit_at(judged, 1), "hit3": hit_at(judged, 3),
            "mrr10": mrr_at(judged, 10)}  # fmt: skip


def mean_figures(per_question: list[dict[str, float]]) -> Figures:
    if not per_question:
        return Figures(0.0, 0.0, 0.0, 0.0)
    return Figures(**{k: round(float(np.mean([q[k] for q in per_question])), 4) for k in per_question[0]})


def score_heldout(
    reranker: Any,
    heldout: list[Mined],
    path: Path,
    model_id: str,
    on_question: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[float]], list[float]]:
    """The reranker's logits for each held-out question's candidates (key → logits), and the milliseconds each
    call took. Appended to ``path`` one question at a time (for ``model_id``), so a resumed gate skips them."""
    done = {row["key"]: row for row in read_lines(path) if row.get("model") == model_id}
    with LineWriter(path) as out:
        for number, item in enumerate(heldout, start=1):
            if item.key not in done and item.candidates:
                tick = time.perf_counter()
                logits = reranker.logits(item.question, [c.text for c in item.candidates])
                ms = (time.perf_counter() - tick) * 1e3
                done[item.key] = {"key": item.key, "model": model_id, "logits": [float(x) for x in logits], "ms": ms}
                out.write(done[item.key])
            if on_question is not None:
                on_question(number, len(heldout))
    logits = {key: row["logits"] for key, row in done.items()}
    return logits, [row["ms"] for key, row in done.items() if key in {h.key for h in heldout}]


def gate(
    heldout: list[Mined],
    logits: dict[str, list[float]],
    thresholds: GateThresholds | None = None,
    blends: Sequence[float] = BLENDS,
    latencies_ms: Sequence[float] = (),
) -> GateResult:
    """Fused vs reranked figures per blend on ``heldout``, the chosen blend and the install verdict."""
    t = thresholds or GateThresholds()
    items = [h for h in heldout if h.key in logits or not h.candidates]
    fused_rows: list[dict[str, float]] = []
    blend_rows: dict[float, list[dict[str, float]]] = {b: [] for b in blends}
    for item in items:
        fused = np.asarray([c.score for c in item.candidates], dtype=np.float64)
        # Ties in the fused order are broken as kb breaks them: the order the store returned.
        fused_rows.append(rank_figures(np.arange(len(fused)), item.gold))
        scores = np.asarray(logits.get(item.key, []), dtype=np.float64)
        for b in blends:
            order = np.argsort(-blend_scores(scores, fused, b), kind="stable") if len(scores) else np.arange(0)
            blend_rows[b].append(rank_figures(order, item.gold))
    fused_figures = mean_figures(fused_rows)
    by_blend = {b: mean_figures(rows) for b, rows in blend_rows.items()}
    keeps_hit3 = [b for b in blends if by_blend[b].hit3 >= fused_figures.hit3 - t.max_hit3_drop - 1e-9]
    # The best nDCG@10; among equals the blend that leans most on fusion (the safer one).
    chosen = max(keeps_hit3 or list(blends), key=lambda b: (by_blend[b].ndcg10, -b))
    reranked = by_blend[chosen]
    gain = round(reranked.ndcg10 - fused_figures.ndcg10, 4)
    _, lo, hi = paired_bootstrap([r["ndcg10"] for r in blend_rows[chosen]], [r["ndcg10"] for r in fused_rows])
    passed, reason = verdict(fused_figures, reranked, t, len(items), chosen)
    return GateResult(
        questions=len(items), fused=fused_figures, blends={f"{b:g}": f for b, f in by_blend.items()}, blend=chosen,
        reranked=reranked, gain=gain, gain_interval=[round(lo, 4), round(hi, 4)], passed=passed, reason=reason,
        latency_ms_p50=round(percentile(list(latencies_ms), 0.5), 1) if latencies_ms else None,
        candidates=round(float(np.mean([len(i.candidates) for i in items])), 1) if items else 0.0,
        positive_retrieved=round(float(np.mean([bool(i.gold) for i in items])), 4) if items else 0.0,
        thresholds=asdict(t),
    )  # fmt: skip


def verdict(
    fused: Figures, reranked: Figures, thresholds: GateThresholds, questions: int, blend: float
) -> tuple[bool, str]:
    """Whether the reranked figures earn an install, and why (or why not), in one sentence."""
    t = thresholds
    if questions < max(1, t.min_questions):
        return False, (f"only {questions} held-out questions (need {max(1, t.min_questions)}): write more "
                       "questions (--questions N) so the gate has something to measure")  # fmt: skip
    gain = reranked.ndcg10 - fused.ndcg10
    drop = fused.hit3 - reranked.hit3
    figures = (f"nDCG@10 {reranked.ndcg10:.3f} vs fused {fused.ndcg10:.3f} ({gain:+.3f}, needs {t.min_gain:+.3f}), "
               f"hit@3 {reranked.hit3:.3f} vs {fused.hit3:.3f} at blend {blend:g}")  # fmt: skip
    if gain < t.min_gain - 1e-9:
        return False, f"reranked does not beat fused by enough: {figures}"
    if drop > t.max_hit3_drop + 1e-9:
        return False, f"hit@3 drops by {drop:.3f} (allowed {t.max_hit3_drop:.3f}): {figures}"
    return True, f"the gate passes: {figures}"
