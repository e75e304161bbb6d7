"""The ONNX embedder against the reference (torch sentence-transformers) on real chunks of the sample
knowledge base, and the exported graph's shape: these are what make the default embedder both right and fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kb.embedding import OnnxEmbedder, SentenceTransformerEmbedder
from kb.samples import sample_kb_path


def sample_texts() -> list[str]:
    texts = []
    for path in sorted(sample_kb_path().rglob("*.md"))[:12]:
        body = path.read_text(encoding="utf-8")
        texts += [body[:300], body[300:1400]]  # a short and a long piece of each page
    return [t for t in texts if t.strip()]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.asarray(SentenceTransformerEmbedder().embed(sample_texts()), dtype=np.float32)


def test_onnx_fp32_gives_torchs_vectors_and_int8_stays_close(reference: np.ndarray) -> None:
    fp32 = np.asarray(OnnxEmbedder().embed(sample_texts()), dtype=np.float32)
    int8 = np.asarray(OnnxEmbedder(quantized=True).embed(sample_texts()), dtype=np.float32)
    assert (fp32 * reference).sum(axis=1).min() > 0.9999
    assert (int8 * reference).sum(axis=1).min() > 0.98  # quantisation moves vectors a little, never far
    # One text at a time (the query path) gives the batch's vectors: padding never leaks into the mean.
    single = np.asarray([OnnxEmbedder().embed([text])[0] for text in sample_texts()[:4]], dtype=np.float32)
    assert np.allclose(single, fp32[:4], atol=1e-5)


def test_int8_leaves_the_first_layers_ffn_output_in_fp32() -> None:
    """Of the single products, keeping that one fp32 helped most (scripts/bench_int8.py): worst / mean cosine to
    fp32 0.981 / 0.9941 with every product int8, 0.988 / 0.9954 without it, on 1,500 PostgreSQL chunks."""
    import onnx

    from kb.onnx_export import KEEP_FP32

    embedder = OnnxEmbedder(quantized=True)
    embedder.load()
    graph = onnx.load(str(embedder.onnx_path), load_external_data=False).graph
    fp32 = [node.name for node in graph.node if node.op_type == "MatMul"]
    assert len(fp32) == len(KEEP_FP32) and all(k in name for k, name in zip(KEEP_FP32, fp32, strict=True))
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == 17  # 6 layers x 3 products, less one


def test_the_export_fuses_attention_into_one_kernel_per_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' default (SDPA) attention exports to a graph the fusion does not recognise, which ran 35%
    slower for the same vectors; the export traces eager attention so every layer becomes one Attention op."""
    import json

    import onnx

    monkeypatch.setenv("KB_CACHE_DIR", str(tmp_path))  # a fresh export, made by this code
    embedder = OnnxEmbedder()
    embedder.load()
    graph = onnx.load(str(embedder.onnx_path), load_external_data=False).graph
    layers = json.loads((embedder.model_path / "config.json").read_text())["num_hidden_layers"]
    assert sum(node.op_type == "Attention" for node in graph.node) == layers
    assert not any(node.op_type == "Softmax" for node in graph.node)


def test_an_index_refuses_another_backend_and_an_older_int8_export_asks_for_a_full_rebuild(tmp_path: Path) -> None:
    import json

    from kb import EmbedderMismatchError, KnowledgeBase
    from kb.onnx_export import EXPORT_REVISION
    from tests.conftest import write

    docs = write(tmp_path / "docs", "a.md", "# Failover\n\nRun zqpromote on the replica.\n").parent
    settings = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")
    with KnowledgeBase.open(tmp_path / "idx", embedder_backend="onnx-int8", **settings) as kb:
        kb.ingest(docs)
        assert kb.info.embedder["export"] == EXPORT_REVISION
    with pytest.raises(EmbedderMismatchError, match="backend 'onnx-int8'"):
        KnowledgeBase.open(tmp_path / "idx", embedder_backend="onnx", **settings)
    # An index built by a kb whose int8 export quantised another graph recorded no export revision.
    info = tmp_path / "idx" / "index.json"
    recorded = json.loads(info.read_text())
    del recorded["embedder"]["export"]
    info.write_text(json.dumps(recorded))
    with pytest.raises(EmbedderMismatchError, match=r"int8 export revision 1 .* kb reindex --all --full"):
        KnowledgeBase.open(tmp_path / "idx", **settings)
    with KnowledgeBase.open(tmp_path / "idx", for_rebuild=True, **settings) as kb:
        kb.reindex(full=True)
    with KnowledgeBase.open(tmp_path / "idx", **settings) as kb:
        assert kb.info.embedder["export"] == EXPORT_REVISION
        assert kb.search("zqpromote", k=1)[0].doc_id == "docs:a.md"


def test_openvino_gives_fp32s_vectors_at_any_padding(reference: np.ndarray) -> None:
    """OpenVINO computes in bfloat16 on CPUs with AMX or AVX-512 BF16 (3.5x ONNX Runtime's fp32 rate here), in
    its default for the CPU elsewhere; either way the vectors stay fp32's, and the sub-batches and padding that
    bound its per-shape kernel cache change nothing: one text at a time gives the batch's vectors."""
    from kb.embedding import OpenVinoEmbedder

    embedder = OpenVinoEmbedder()
    vectors = np.asarray(embedder.embed(sample_texts()), dtype=np.float32)
    assert embedder.precision in {"bf16", "f16", "f32"}
    assert (vectors * reference).sum(axis=1).min() > 0.9999
    single = np.asarray([embedder.embed([text])[0] for text in sample_texts()[:5]], dtype=np.float32)
    assert (single * vectors[:5]).sum(axis=1).min() > 0.99999


def test_openvino_sees_a_few_shapes_whatever_the_lengths_and_batch_sizes() -> None:
    """OpenVINO keeps compiled kernels per input shape (a query of every length up to 255 words: +208 MB of
    memory, against ONNX Runtime's +7; evals/reports/bench-openvino.md): a batch runs as power-of-two
    sub-batches, each padded to a multiple of 16 tokens, so a server sees a few dozen shapes."""
    from kb.embedding import OpenVinoEmbedder

    embedder = OpenVinoEmbedder(embed_batch_size=32)
    embedder.load()
    seen: set[tuple[int, ...]] = set()
    infer = OpenVinoEmbedder._hidden_states

    def recording(self: OpenVinoEmbedder, feed: dict[str, np.ndarray]) -> np.ndarray:
        seen.add(feed["input_ids"].shape)
        return infer(self, feed)

    words = ["rotate", "the", "api", "key", "before", "it", "leaks", "into", "a", "public", "repository"]
    texts = [" ".join(words[i % len(words)] for i in range(n)) for n in range(1, 120, 3)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OpenVinoEmbedder, "_hidden_states", recording)
        for rows in range(1, 33, 5):
            embedder.embed(texts[:rows])
        for text in texts:
            embedder.embed([text])
    assert {rows for rows, _ in seen} <= {1, 2, 4, 8, 16, 32}
    assert all(width % 16 == 0 for _, width in seen)
    assert len(seen) <= 30, sorted(seen)
    # No row is computed for nothing: 33 texts run as 32 + 1, not padded to 64.
    seen.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OpenVinoEmbedder, "_hidden_states", recording)
        OpenVinoEmbedder(embed_batch_size=48).embed(texts[:33])
    assert sorted(rows for rows, _ in seen) == [1, 32]


def test_an_openvino_index_refuses_onnx_and_keeps_its_backend_under_auto(tmp_path: Path) -> None:
    from kb import EmbedderMismatchError, KnowledgeBase
    from tests.conftest import write

    docs = write(tmp_path / "docs", "a.md", "# Failover\n\nRun zqpromote on the replica.\n").parent
    settings = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")
    with KnowledgeBase.open(tmp_path / "idx", embedder_backend="openvino", **settings) as kb:
        kb.ingest(docs)
    with pytest.raises(EmbedderMismatchError, match="backend 'openvino'"):
        KnowledgeBase.open(tmp_path / "idx", embedder_backend="onnx", **settings)
    with KnowledgeBase.open(tmp_path / "idx", embedder_backend="auto", **settings) as kb:
        assert kb.info.embedder["backend"] == "openvino"
        assert kb.search("how do I promote the replica", k=1, mode="dense")[0].doc_id == "docs:a.md"


def test_openvino_embeds_from_many_threads_at_once() -> None:
    """A server embeds queries from its request threads concurrently; an OpenVINO infer request runs one
    inference at a time (a shared one fails with "Infer Request is busy"), so each thread gets its own."""
    from concurrent.futures import ThreadPoolExecutor

    from kb.embedding import OpenVinoEmbedder

    embedder = OpenVinoEmbedder()
    texts = sample_texts()[:8]
    alone = np.asarray([embedder.embed([text])[0] for text in texts], dtype=np.float32)
    with ThreadPoolExecutor(8) as pool:
        together = np.asarray(list(pool.map(lambda text: embedder.embed([text])[0], texts * 4)), dtype=np.float32)
    assert np.allclose(together, np.tile(alone, (4, 1)), atol=1e-5)


def test_a_new_index_falls_back_to_onnx_where_openvino_is_not_installed(tmp_path: Path) -> None:
    """OpenVINO publishes no wheels for some platforms (Windows on ARM, musl): a new index there gets the onnx
    backend instead of recording one it cannot load and then refusing the fix its error suggests."""
    import subprocess
    import sys

    from tests.conftest import write

    docs = write(tmp_path / "docs", "a.md", "# Failover\n\nRun zqpromote on the replica.\n").parent
    probe = (
        "import sys\nsys.modules['openvino'] = None\n"  # as if it were not installed
        "from kb import KnowledgeBase\n"
        f"with KnowledgeBase.open({str(tmp_path / 'idx')!r}, chunk_max_tokens=64, chunk_min_tokens=8) as kb:\n"
        f"    kb.ingest({str(docs)!r})\n"
        "    print(kb.info.embedder['backend'], kb.search('zqpromote', k=1)[0].doc_id)\n"
    )
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.split() == ["onnx", "docs:a.md"]


def test_a_broken_export_names_its_file_and_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kb.embedding import OpenVinoEmbedder
    from kb.errors import ModelNotAvailableError

    monkeypatch.setenv("KB_CACHE_DIR", str(tmp_path))
    embedder = OpenVinoEmbedder()
    embedder.onnx_path.parent.mkdir(parents=True)
    embedder.onnx_path.write_bytes(b"not an onnx graph")  # a disk that filled up mid-export
    with pytest.raises(ModelNotAvailableError, match=rf"{embedder.onnx_path.name}.*Delete the file"):
        embedder.embed(["rotate the API key"])
