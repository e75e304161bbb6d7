"""Retrieval on the sample knowledge base: every mode finds the right documents, the hybrid is at least as
good as its best leg, exact tokens are found through BM25, filters hold, and the lexical leg agrees
with an independent BM25 implementation (rank-bm25)."""

from __future__ import annotations

import re

import pytest
from rank_bm25 import BM25Okapi

from kb import ConfigError, KnowledgeBase
from kb.samples import sample_kb_path


def hit_rates(kb: KnowledgeBase, questions: list[dict], mode: str) -> tuple[float, float]:
    answerable = [q for q in questions if q["answerable"]]
    at1 = at5 = 0
    for q in answerable:
        docs = [h.path for h in kb.search(q["question"], k=5, mode=mode)]
        gold = {g["doc_id"] for g in q["gold"]}
        at1 += docs[0] in gold
        at5 += bool(gold & set(docs))
    return at1 / len(answerable), at5 / len(answerable)


def test_every_mode_finds_the_gold_document(backend_kb: KnowledgeBase, sample_questions: list[dict]) -> None:
    rates = {mode: hit_rates(backend_kb, sample_questions, mode) for mode in ("dense", "bm25", "hybrid")}
    for mode, (_, at5) in rates.items():
        assert at5 >= 0.85, (mode, rates)
    # The fused ranking must not be worse than its best single leg.
    assert rates["hybrid"][0] >= max(rates["dense"][0], rates["bm25"][0]), rates


@pytest.mark.parametrize(
    "token",
    [
        "E4290",
        "billing.retry_limit",
        "--no-cache",
        "lk_rk_",
        "recon_exceptions",
        "ledger.recon_tolerance_minor",
        "3.1.4",
    ],
)
def test_exact_tokens_are_found_through_the_bm25_leg(backend_kb: KnowledgeBase, token: str) -> None:
    top = backend_kb.search(token, k=1, mode="bm25")
    assert token in top[0].text
    assert any(token in h.text for h in backend_kb.search(token, k=3))  # and survive fusion


def test_fused_exact_term_outranks_its_parts(backend_kb: KnowledgeBase) -> None:
    # "retry limit" in prose appears in several chunks; the dotted key itself must come first.
    hits = backend_kb.search("billing.retry_limit default", k=3, mode="bm25")
    assert "billing.retry_limit" in hits[0].text


def test_filters_give_a_full_top_k_of_allowed_documents(backend_kb: KnowledgeBase) -> None:
    hits = backend_kb.search("how do I rotate the API key?", k=5, filters={"product": "billing"})
    assert len(hits) == 5
    assert all(h.metadata.get("product") == "billing" for h in hits)
    runbooks = backend_kb.search("what to do", k=8, filters={"kind": "runbook", "team": ["sre", "security"]})
    assert runbooks and all(
        h.metadata["kind"] == "runbook" and h.metadata["team"] in {"sre", "security"} for h in runbooks
    )
    assert backend_kb.search("anything", filters={"product": "no-such-product"}) == []
    with pytest.raises(ConfigError, match=r"filters\['product'\]"):
        backend_kb.search("x", filters={"product": {"nested": 1}})  # type: ignore[dict-item]


def test_hits_carry_where_they_come_from(backend_kb: KnowledgeBase) -> None:
    hit = backend_kb.search("What does error E4012 mean and how do I fix it?", k=1)[0]
    assert hit.doc_id == "sample_kb:product/billing/retries.md"
    assert hit.header_path == "Payment Retries > Error E4012"
    text = (sample_kb_path() / hit.path).read_text()
    assert text[hit.span.start : hit.span.end] == hit.text
    lines = text.split("\n")[hit.span.line_start - 1 : hit.span.line_end]
    assert lines[0].startswith("## Error E4012")


def test_lexical_leg_agrees_with_rank_bm25(backend_kb: KnowledgeBase) -> None:
    """rank-bm25 over the same chunk texts is the reference; stemming and stop words differ a little,
    so the top-5 sets must mostly agree, not match exactly."""
    chunks = list(backend_kb.store.scroll())
    tokenize = lambda s: re.findall(r"[a-z0-9]+", s.lower())  # noqa: E731
    texts = [f"{c.payload['title']}\n{' '.join(c.payload['header_path'])}\n{c.payload['text']}" for c in chunks]
    oracle = BM25Okapi([tokenize(t) for t in texts])
    queries = [
        "patronictl failover",
        "webhook signature hmac",
        "invoice export csv",
        "proration credit",
        "dunning email",
    ]
    overlaps = []
    for query in queries:
        scores = oracle.get_scores(tokenize(query))
        expected = {chunks[i].id for i in sorted(range(len(chunks)), key=lambda i: -scores[i])[:5]}
        got = {h.node_id for h in backend_kb.search(query, k=5, mode="bm25")}
        overlaps.append(len(expected & got) / 5)
        assert next(iter(got & expected), None) is not None, query  # never disjoint
    assert sum(overlaps) / len(overlaps) >= 0.6, overlaps


def test_bad_queries_get_clear_errors(backend_kb: KnowledgeBase) -> None:
    with pytest.raises(ConfigError, match="query"):
        backend_kb.search("   ")
    with pytest.raises(ConfigError, match="k: expected a positive"):
        backend_kb.search("x", k=0)
