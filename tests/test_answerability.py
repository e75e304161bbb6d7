"""The answerability gate: signals from both legs on a real index, a logistic fit that separates answerable
from unanswerable questions, and an engine that refuses before generation when the gate says so."""

from __future__ import annotations

import numpy as np

from kb import KnowledgeBase
from kb.answerability import FEATURES, AnswerabilityGate, Signals, fit_gate, signals_for, signals_of


def test_signals_of_legs() -> None:
    dense = [("a", 0.8), ("b", 0.5)] + [("c", 0.3)] * 8
    bm25 = [("b", 6.0), ("a", 2.0)]
    signals = signals_of(dense, bm25, query_terms=3, term_coverage=0.5)
    assert signals == Signals(0.8, 0.8 - 0.3, 2.0, 2 / 3, 0.5)  # a, b of a, b, c
    assert signals_of([], [], 0).top_cosine == 0.0  # nothing readable: no crash, lowest signals


def test_signals_separate_near_domain_unanswerable_questions(sample_kb: KnowledgeBase) -> None:
    retriever = sample_kb.hybrid_search(10)
    known = signals_for(retriever, "How long are full database backups kept?")
    alien = signals_for(retriever, "How do I configure Kubernetes pod autoscaling with KEDA for Kafka consumers?")
    assert known.term_coverage > alien.term_coverage and known.bm25_per_term > alien.bm25_per_term


def test_fit_gate_learns_the_direction_and_the_engine_refuses_below_threshold(sample_kb: KnowledgeBase) -> None:
    rng = np.random.default_rng(3)
    good = rng.normal([0.6, 0.3, 3.0, 0.7, 0.9], 0.05, size=(40, len(FEATURES)))
    bad = rng.normal([0.4, 0.2, 1.2, 0.5, 0.3], 0.05, size=(40, len(FEATURES)))
    gate = fit_gate(np.vstack([good, bad]), np.array([True] * 40 + [False] * 40))
    assert gate.probability(Signals(*good.mean(axis=0))) > 0.9 > 0.1 > gate.probability(Signals(*bad.mean(axis=0)))
    assert AnswerabilityGate.model_validate_json(gate.to_json()).weights == [round(w, 4) for w in gate.weights]
    question = "How do I configure Kubernetes pod autoscaling with KEDA for Kafka consumers?"
    sample_kb.use_llm(None)
    before = sample_kb.settings.answerability_gate
    try:
        sample_kb.settings.answerability_gate = None
        assert not sample_kb.ask(question).refused  # the cosine floor alone lets it through
        strict = AnswerabilityGate(means=[0.0] * 5, scales=[1.0] * 5, weights=[0, 0, 0, 0, 10.0], bias=-5.0)
        sample_kb.settings.answerability_gate = strict.with_threshold(0.5)
        refused = sample_kb.ask(question)
        assert refused.refused and refused.refusal_reason == "no_relevant_sources" and refused.sources
        assert not sample_kb.ask("How long are full database backups kept?").refused
    finally:
        sample_kb.settings.answerability_gate = before
