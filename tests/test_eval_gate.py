"""The CI regression gate (evals/gate.py): on the sample knowledge base, fused hit@5 and the citation
precision of extractive answers must not fall below the values recorded in evals/sample-gate.json."""

from __future__ import annotations

import json

import pytest

from evals.gate import GATE, GATED, measure
from kb import KnowledgeBase


@pytest.fixture(scope="module")
def figures(sample_kb: KnowledgeBase) -> dict[str, float]:
    return measure(sample_kb)


@pytest.mark.parametrize("key", GATED)
def test_sample_figures_do_not_regress(figures: dict[str, float], key: str) -> None:
    recorded = json.loads(GATE.read_text())
    assert figures[key] >= recorded[key] - 1e-9, (
        f"{key} fell to {figures[key]:.4f} from the recorded {recorded[key]:.4f}; "
        "if the change is intended, re-record with: python evals/gate.py --record"
    )
