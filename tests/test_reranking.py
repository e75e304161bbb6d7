"""The cross-encoder stage with a real, tiny cross-encoder trained in the fixture: the first two layers of the
bundled MiniLM plus a fresh head, trained for a few seconds on the sample knowledge base (its questions with
their gold chunks against other chunks, and each chunk's heading against its body), so it has learned
signal. No cross-encoder weights can be downloaded here, which is also what the offline path tests."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from kb import KnowledgeBase
from kb.reranking import CrossEncoderReranker, RerankerBackend, export_onnx


@pytest.fixture(scope="session")
def tiny_cross_encoder(
    sample_kb: KnowledgeBase, sample_questions: list[dict], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kb.embedding import resolve_model_path

    torch.manual_seed(0)
    rng = random.Random(0)
    minilm = resolve_model_path("all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig.from_pretrained(str(minilm), num_labels=1, num_hidden_layers=2)
    model = BertForSequenceClassification.from_pretrained(str(minilm), config=config)
    chunks = sorted((c.payload for c in sample_kb.store.scroll()), key=lambda c: (c["path"], c["chunk_index"]))
    pairs: list[tuple[str, str, float]] = []
    for q in sample_questions:
        if not q["answerable"]:
            continue
        gold = {g["doc_id"] for g in q["gold"]}
        best = sample_kb.search(q["question"], k=10)
        positives = [h.text for h in best if h.path in gold][:1]
        negatives = [h.text for h in best if h.path not in gold][:3] + [
            c["text"] for c in rng.sample(chunks, 3) if c["path"] not in gold
        ]
        pairs += [(q["question"], t, 1.0) for t in positives * 3] + [(q["question"], t, 0.0) for t in negatives]
    for c in rng.sample(chunks, 60):  # heading → its own body vs another document's body
        heading = " ".join(c["header_path"][-1:]) or c["title"]
        other = rng.choice([o for o in chunks if o["doc_id"] != c["doc_id"]])
        pairs += [(heading, c["text"], 1.0), (heading, other["text"], 0.0)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(8):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), 16):
            batch = pairs[start : start + 16]
            enc = tokenizer([p[0] for p in batch], [p[1] for p in batch], truncation=True, max_length=128,
                            padding=True, return_tensors="pt")  # fmt: skip
            loss = loss_fn(model(**enc).logits.squeeze(-1), torch.tensor([p[2] for p in batch]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    model.eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture
def reranker_kb(sample_kb: KnowledgeBase, tiny_cross_encoder: Path):
    sample_kb.use_llm(None)
    sample_kb.use_reranker(CrossEncoderReranker.load(tiny_cross_encoder, top_k=3))
    yield sample_kb
    sample_kb.use_reranker(None)


def candidates(kb: KnowledgeBase, question: str, n: int = 20) -> list[NodeWithScore]:
    return kb.retriever(n).retrieve(question)  # the LlamaIndex face: nodes, as a postprocessor reads them


def untrained_cross_encoder(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kb.embedding import resolve_model_path

    torch.manual_seed(1)
    minilm = resolve_model_path("all-MiniLM-L6-v2")
    config = BertConfig.from_pretrained(str(minilm), num_labels=1, num_hidden_layers=2)
    BertForSequenceClassification.from_pretrained(str(minilm), config=config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(folder))
    return folder


trains_a_model = pytest.mark.slow  # the tiny cross-encoder is trained for 90 s in the fixture


@trains_a_model
def test_reranking_orders_by_learned_relevance_and_keeps_top_k(
    reranker_kb: KnowledgeBase, sample_questions: list[dict], tmp_path: Path
) -> None:
    trained = reranker_kb.reranker
    untrained = CrossEncoderReranker.load(untrained_cross_encoder(tmp_path / "untrained"), top_k=3)
    assert trained is not None
    first_gold = {"trained": 0, "untrained": 0}
    answerable = [q for q in sample_questions if q["answerable"]]
    for q in answerable:
        gold = {g["doc_id"] for g in q["gold"]}
        for name, reranker in (("trained", trained), ("untrained", untrained)):
            nodes = candidates(reranker_kb, q["question"])
            fused = {n.node.node_id: n.score for n in nodes}
            kept = reranker.postprocess_nodes(nodes, query_str=q["question"])
            assert len(kept) == 3
            scores = [n.score for n in kept]
            assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
            assert all(n.node.metadata["retrieval_score"] == fused[n.node.node_id] for n in kept)  # kept beside
            first_gold[name] += kept[0].node.metadata["path"] in gold
    rate = {name: hits / len(answerable) for name, hits in first_gold.items()}
    # The ordering comes from what the model learned, not from the candidates' order or chance (a 2-layer model
    # trained in seconds: its absolute rate moves by a question when the candidates' tie order does).
    assert rate["trained"] >= 0.45 and rate["trained"] >= rate["untrained"] + 0.15, rate


@trains_a_model
def test_batching_does_not_change_scores(tiny_cross_encoder: Path) -> None:
    texts = [f"Rotate the API key number {i} with lumen keys roll." for i in range(37)]
    one = CrossEncoderReranker.load(tiny_cross_encoder, batch_size=1).score("how do I rotate a key?", texts)
    many = CrossEncoderReranker.load(tiny_cross_encoder, batch_size=16).score("how do I rotate a key?", texts)
    np.testing.assert_allclose(one, many, atol=1e-4)


@trains_a_model
def test_answers_are_reranked_and_the_floor_feeds_refusal(reranker_kb: KnowledgeBase) -> None:
    question = "How do I rotate an API key?"
    budget, reranker_kb.settings.answer_context_tokens = reranker_kb.settings.answer_context_tokens, 0
    try:  # no small-to-big here: adjacent kept chunks would merge into one source
        answer = reranker_kb.ask(question)
    finally:
        reranker_kb.settings.answer_context_tokens = budget
    assert answer.reranked and not answer.refused and len(answer.sources) == 3  # reranker_top_k
    assert answer.timings["rerank"] > 0
    best = max(reranker_kb.reranker.score(question, [n.node.get_content() for n in candidates(reranker_kb, question)]))
    original = reranker_kb.settings.reranker_floor
    try:
        reranker_kb.settings.reranker_floor = float(best) + 1e-3
        refused = reranker_kb.ask(question)
        assert refused.refused and refused.refusal_reason == "no_relevant_sources" and refused.reranked
        reranker_kb.settings.reranker_floor = float(best) - 1e-3
        assert not reranker_kb.ask(question).refused
    finally:
        reranker_kb.settings.reranker_floor = original


@trains_a_model
def test_search_rerank_option(reranker_kb: KnowledgeBase) -> None:
    hits = reranker_kb.search("What does error E4012 mean?", k=4, rerank=True)
    assert len(hits) == 4 and all(h.rerank_score is not None for h in hits)
    assert [h.rerank_score for h in hits] == sorted((h.rerank_score for h in hits), reverse=True)
    assert all(h.rerank_score is None for h in reranker_kb.search("What does error E4012 mean?", k=4))


class _Reverse(BaseNodePostprocessor):
    """A stand-in for a user's own reranker: any LlamaIndex node postprocessor (here: reverse, keep 3)."""

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return [NodeWithScore(node=n.node, score=float(i)) for i, n in enumerate(reversed(nodes))][:3]


def test_any_node_postprocessor_reranks_search_and_answers(sample_kb: KnowledgeBase) -> None:
    """``use_reranker`` takes any node postprocessor, but ``search(rerank=True)`` called the cross-encoder's own
    ``rank`` and raised AttributeError."""
    question = "What does error E4012 mean?"
    fused = sample_kb.search(question, k=sample_kb.settings.reranker_candidates)
    sample_kb.use_reranker(_Reverse())
    try:
        hits = sample_kb.search(question, k=5, rerank=True)
        assert [h.node_id for h in hits] == [h.node_id for h in reversed(fused)][:3]
        assert [h.rerank_score for h in hits] == [0.0, 1.0, 2.0] and hits[0].text == fused[-1].text
        assert sample_kb.status().reranker["active"] and sample_kb.status().reranker["blend"] is None
        assert sample_kb.ask(question).sources
    finally:
        sample_kb.use_reranker(None)


@trains_a_model
def test_onnx_int8_agrees_with_torch(tiny_cross_encoder: Path, tmp_path: Path, sample_kb: KnowledgeBase) -> None:
    torch_reranker = CrossEncoderReranker.load(tiny_cross_encoder, backend="torch")
    onnx_reranker = CrossEncoderReranker.load(tiny_cross_encoder, backend=RerankerBackend.ONNX)
    assert (tiny_cross_encoder / "model-int8.onnx").exists()
    for question in ("How do I rotate an API key?", "Who is paged for a SEV-1 incident?", "What is E4012?"):
        texts = [n.node.get_content() for n in candidates(sample_kb, question)]
        a, b = torch_reranker.score(question, texts), onnx_reranker.score(question, texts)
        # int8 dynamic quantisation of a 2-layer model trained for seconds moves its relevance by up to ~0.09 on
        # the candidates convex fusion hands it (0.055 and 0.088 measured); what reranking needs is the same order
        # at the top: int8's best candidate is torch's best or as good by torch's own score, and scores within 0.12.
        assert np.abs(a - b).max() < 0.12, np.abs(a - b).max()
        assert a[int(np.argmax(b))] >= a.max() - 0.02, (a, b)
    assert export_onnx(tiny_cross_encoder) == tiny_cross_encoder / "model-int8.onnx"  # exported once


def test_offline_without_the_model_carries_on_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("kb tried to reach the network for a missing reranker")

    monkeypatch.setattr(socket, "create_connection", no_network)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# API keys\n\nRotate API keys every 90 days with lumen keys roll.\n")
    with KnowledgeBase.open(tmp_path / "idx", llm_backend="extractive", chunk_min_tokens=8) as kb:
        kb.ingest(docs)
        answer = kb.ask("How often are API keys rotated?")
        assert not answer.refused and answer.reranked is False
        status = kb.status().reranker
        assert status["active"] is False and "HF_HUB_OFFLINE" in status["note"]
        assert kb.search("rotate keys", rerank=True)[0].rerank_score is None  # plain ranking, no crash


@trains_a_model
def test_reranker_from_a_local_folder_setting(tiny_cross_encoder: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Backups\n\nBackups run nightly at 02:00 UTC.\n")
    (docs / "b.md").write_text("# Keys\n\nRotate API keys every 90 days.\n")
    settings = dict(llm_backend="extractive", reranker_model=str(tiny_cross_encoder), reranker_backend="torch")
    with KnowledgeBase.open(tmp_path / "idx", chunk_min_tokens=8, **settings) as kb:
        kb.ingest(docs)
        assert kb.reranker is not None and kb.status().reranker["active"]
        assert kb.ask("When do backups run?").reranked


@trains_a_model
def test_postprocessor_on_plain_llamaindex_nodes(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker.load(tiny_cross_encoder, top_k=1)
    nodes = [
        NodeWithScore(node=TextNode(text="Backups run nightly at 02:00 UTC."), score=0.9),
        NodeWithScore(node=TextNode(text="Rotate API keys every 90 days with lumen keys roll."), score=0.1),
    ]
    scores = reranker.score("How do I rotate API keys?", [n.node.get_content() for n in nodes])
    kept = reranker.postprocess_nodes(nodes, query_str="How do I rotate API keys?")
    best = int(np.argmax(scores))
    assert len(kept) == 1 and kept[0].node is nodes[best].node and kept[0].score == pytest.approx(scores[best])
    assert kept[0].node.metadata["retrieval_score"] == [0.9, 0.1][best]


@trains_a_model
def test_blend_mixes_the_retrieval_order_in_and_the_model_card_sets_it(
    tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    question = "How do I rotate API keys?"
    texts = [
        "Backups run nightly at 02:00 UTC.",
        "Rotate API keys every 90 days with lumen keys roll.",
        "The status page lists open incidents.",
    ]
    model_only = CrossEncoderReranker.load(tiny_cross_encoder, top_k=3, blend=1.0)
    relevance = model_only.score(question, texts)
    model_order = [int(i) for i in np.argsort(-relevance)]
    retrieval = [0.0, 0.0, 0.0]
    for position, i in enumerate(model_order):  # retrieval disagrees: the model's best is retrieval's worst
        retrieval[i] = 0.1 * (position + 1)
    assert [i for i, _ in model_only.rank(question, texts, 3, retrieval)] == model_order
    retrieval_only = CrossEncoderReranker.load(tiny_cross_encoder, top_k=3, blend=0.0)
    ranked = retrieval_only.rank(question, texts, 3, retrieval)
    assert [i for i, _ in ranked] == model_order[::-1]
    # The relevance handed on (and read by the refusal floor) stays the cross-encoder's own, whatever the order.
    assert {i: s for i, s in ranked} == pytest.approx(dict(enumerate(relevance.tolist())))
    # Without retrieval scores (nothing to mix in) the cross-encoder order is used.
    assert [i for i, _ in retrieval_only.rank(question, texts, 3)] == model_order

    folder = tmp_path / "with-card"
    shutil.copytree(tiny_cross_encoder, folder)
    (folder / "kb-reranker.json").write_text(json.dumps({"blend": 0.25}))
    assert CrossEncoderReranker.load(folder).blend == 0.25
    assert CrossEncoderReranker.load(folder, blend=0.8).blend == 0.8  # the argument (setting) wins
    with KnowledgeBase.open(tmp_path / "idx", reranker_model=str(folder), reranker_backend="torch") as kb:
        assert kb.reranker is not None and kb.status().reranker["blend"] == 0.25


@trains_a_model
def test_onnx_export_appears_atomically(
    tiny_cross_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes loading a model with no ONNX export yet (two `kb eval` runs, API workers): one used to find
    the other's half-written model-int8.onnx and fail ("Failed to find proper ai.onnx domain"). The export must
    appear at its final path only when complete."""
    import shutil

    import onnxruntime.quantization as quantization

    folder = tmp_path / "fresh-model"
    shutil.copytree(tiny_cross_encoder, folder, ignore=shutil.ignore_patterns("*.onnx"))
    target = folder / "model-int8.onnx"
    seen_while_writing: list[bool] = []
    real = quantization.quantize_dynamic

    def watching(*args, **kwargs):
        real(*args, **kwargs)
        seen_while_writing.append(target.exists())  # what a second process would find at this moment

    monkeypatch.setattr(quantization, "quantize_dynamic", watching)
    assert export_onnx(folder) == target
    assert seen_while_writing == [False]
    assert [p.name for p in folder.iterdir() if "onnx" in p.name] == ["model-int8.onnx"]  # no leftovers
    onnx = CrossEncoderReranker.load(folder, backend="onnx").score("how do I rotate a key?", ["Rotate keys."])
    torch_ = CrossEncoderReranker.load(folder, backend="torch").score("how do I rotate a key?", ["Rotate keys."])
    assert abs(float(onnx[0]) - float(torch_[0])) < 0.05
