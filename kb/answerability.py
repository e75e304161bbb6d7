"""Can the documents answer this question? A calibrated gate from retrieval signals, before any generation.

    signals = signals_for(retriever, "How do I use multiple accounts with SSH?")
    gate = AnswerabilityGate.model_validate(settings.answerability_gate)
    gate.probability(signals) < gate.threshold       # → refuse without calling the generator

A fixed cosine floor is one signal; it refuses off-topic questions and lets near-domain ones through (a git
question asked of the Python docs finds chunks about version control at cosine 0.5). The gate reads five
signals of the two legs:

- ``top_cosine``: the best chunk's dense cosine to the question;
- ``cosine_margin``: how far the best stands above the 10th (a real answer stands out; a vague match is flat);
- ``bm25_per_term``: BM25's best score per distinct query term (the question's own words occur together);
- ``agreement``: the share of the dense top 5's documents that BM25's top 10 also finds;
- ``term_coverage``: the share of the question's content words found in the chunks either leg returned (a
  question naming things the documents never mention — KEDA, Kafka — is about something else).

A logistic model over the standardised signals gives P(answerable); its weights and the threshold are fitted
on tune splits by ``evals/tune_refusal.py`` (report: ``evals/reports/refusal-tuning.md``) and stored in the
settings, so a team can refit them on its own questions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from kb.tokens import STOPWORDS

if TYPE_CHECKING:
    from kb.retrieval import HybridSearch

_WORD = re.compile(r"[a-z0-9][a-z0-9_.\-]*[a-z0-9]|[a-z0-9]")
FEATURES = ("top_cosine", "cosine_margin", "bm25_per_term", "agreement", "term_coverage")


@dataclass(frozen=True)
class Signals:
    top_cosine: float
    cosine_margin: float
    bm25_per_term: float
    agreement: float
    term_coverage: float

    def vector(self) -> list[float]:
        return [getattr(self, name) for name in FEATURES]


def coverage(question: str, texts: Sequence[str]) -> float:
    """The share of the question's content words that occur in any of ``texts``."""
    words = {_stem(w) for w in _WORD.findall(question.lower()) if w not in STOPWORDS and len(w) > 2}
    if not words:
        return 1.0
    found = {_stem(w) for text in texts for w in _WORD.findall(text.lower())}
    return len(words & found) / len(words)


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def signals_of(
    dense: Sequence[tuple[str, float]],
    bm25: Sequence[tuple[str, float]],
    query_terms: int,
    term_coverage: float = 1.0,
) -> Signals:
    """Signals from the legs' (document id, score) lists, best first (dense scores are cosines)."""
    top = dense[0][1] if dense else 0.0
    tenth = dense[min(9, len(dense) - 1)][1] if dense else 0.0
    best_bm25 = bm25[0][1] if bm25 else 0.0
    dense_docs = list(dict.fromkeys(doc for doc, _ in dense))[:5]
    bm25_docs = {doc for doc, _ in bm25[:10]}
    agreement = sum(doc in bm25_docs for doc in dense_docs) / len(dense_docs) if dense_docs else 0.0
    return Signals(
        float(top), float(top - tenth), float(best_bm25 / max(1, query_terms)), float(agreement), term_coverage
    )


def signals_for(retriever: HybridSearch, question: str) -> Signals:
    legs = retriever.legs(question, k=10)
    return signals_of(legs.dense, legs.bm25, legs.query_terms, coverage(question, legs.texts))


class AnswerabilityGate(BaseModel):
    """P(answerable) = sigmoid(bias + Σ weight × (signal − mean) / scale); refuse below ``threshold``."""

    means: list[float] = Field(min_length=len(FEATURES), max_length=len(FEATURES))
    scales: list[float] = Field(min_length=len(FEATURES), max_length=len(FEATURES))
    weights: list[float] = Field(min_length=len(FEATURES), max_length=len(FEATURES))
    bias: float
    threshold: float = Field(0.5, ge=0.0, le=1.0)

    def probability(self, signals: Signals) -> float:
        z = self.bias + sum(
            w * (v - m) / (s or 1.0)
            for w, v, m, s in zip(self.weights, signals.vector(), self.means, self.scales, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def with_threshold(self, threshold: float) -> AnswerabilityGate:
        return self.model_copy(update={"threshold": threshold})

    def to_json(self) -> str:
        return json.dumps({k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v])
                           for k, v in self.model_dump().items()})  # fmt: skip


def fit_gate(x: np.ndarray, answerable: np.ndarray, l2: float = 1.0) -> AnswerabilityGate:
    """Logistic regression (L2, Newton steps) over standardised signals, classes weighted equally."""
    means, scales = x.mean(axis=0), x.std(axis=0)
    scales[scales == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - means) / scales])
    y = answerable.astype(float)
    weight = np.where(y == 1, 0.5 / max(1, y.sum()), 0.5 / max(1, (1 - y).sum())) * len(y)
    beta = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[0, 0] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ beta))
        gradient = z.T @ (weight * (p - y)) + penalty @ beta
        hessian = (z * (weight * p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return AnswerabilityGate(
        means=means.tolist(), scales=scales.tolist(), weights=beta[1:].tolist(), bias=float(beta[0])
    )
