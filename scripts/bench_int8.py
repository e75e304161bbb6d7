"""Which of the embedder's matrix products int8 may quantise: vectors against fp32, and speed, per variant.

    python scripts/bench_int8.py            # writes evals/reports/bench-int8.md

Every variant is ONNX Runtime's dynamic int8 quantisation (weights per channel, activations per tensor at run
time) of kb's fused fp32 export of the bundled MiniLM, with some MatMul nodes left in fp32. On 1,500 random
PostgreSQL chunks (exactly the text ingest embedded: ``embedding_text``) and 300 section-title queries: the
encoding rate (batches of 32 sorted by length) and its ratio to fp32 in the same run, query embedding p50 back
to back, and each vector's cosine to fp32's (min, 1st percentile, mean). kb's int8 export keeps
:data:`kb.onnx_export.KEEP_FP32` in fp32; retrieval quality of the chosen one is `evals/embedder_quality.py`'s.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import onnx
from onnx import TensorProto
from onnxruntime.quantization import QuantType, quantize_dynamic
from section_titles import section_titles

from kb import KnowledgeBase
from kb.chunking import Chunk
from kb.document import Span
from kb.embedding import OnnxEmbedder
from kb.indexing.indexer import embedding_text
from kb.onnx_export import onnx_session
from kb.tokens import TokenCounter

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "int8"
REPORT = REPO / "evals" / "reports" / "bench-int8.md"
INDEX = REPO / "indexes" / "postgres"  # `kb eval` builds it (evals/sets/postgres-exact.jsonl)


def layer_of(name: str) -> int | None:
    return next((i for i in range(64) if f"layer.{i}/" in name), None)


def ffn_out(name: str) -> bool:
    return "/output/dense/" in name and "/attention/" not in name


Keep = Callable[[str, str], bool]  # (op type, node name) → stays fp32
VARIANTS: dict[str, Keep] = {
    "every product int8": lambda op, name: False,
    "attention (QKV) fp32": lambda op, name: op == "Attention",
    "FFN output fp32": lambda op, name: ffn_out(name),
    "layers 0 and 5 (but QKV) fp32": lambda op, name: layer_of(name) in (0, 5),
    **{f"layer {i} FFN output fp32": (lambda op, name, i=i: ffn_out(name) and layer_of(name) == i) for i in range(6)},
    "layers 0-1 FFN output fp32": lambda op, name: ffn_out(name) and layer_of(name) in (0, 1),
    "layers 0-2 FFN output fp32": lambda op, name: ffn_out(name) and layer_of(name) in (0, 1, 2),
}


def quantised(fp32: Path, name: str, keep: Keep) -> tuple[Path, int]:
    graph = onnx.load(str(fp32), load_external_data=False).graph
    kept = [n.name for n in graph.node if n.op_type in ("MatMul", "Attention") and keep(n.op_type, n.name)]
    target = WORK / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.onnx"
    if not target.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(
            str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=kept,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )  # fmt: skip
    return target, len(kept)


def ingested_texts(payloads: list[dict], embedder: OnnxEmbedder) -> list[str]:
    """What ingest embedded for these chunks (their records' payloads)."""
    counter = TokenCounter.for_model(embedder.model_path)
    tokens = counter.count([p["text"] for p in payloads])
    return [
        embedding_text(p["title"], Chunk(p["text"], Span(0, 0, 0, 0), p["header_path"], count), embedder.max_tokens, counter)
        for p, count in zip(payloads, tokens, strict=True)
    ]


def measure(embedder: OnnxEmbedder, path: Path, texts: list[str], queries: list[str]) -> dict:
    embedder._session = onnx_session(path)
    embedder.embed_array(texts[:64])  # warm
    tick = time.perf_counter()
    vectors = embedder.embed_array(texts)
    rate = len(texts) / (time.perf_counter() - tick)
    for query in queries[:20]:
        embedder.embed_array([query])
    times = []
    for query in queries:
        tick = time.perf_counter()
        embedder.embed_array([query])
        times.append((time.perf_counter() - tick) * 1e3)
    return {"rate": rate, "query_p50": statistics.median(times), "vectors": vectors}


def main() -> None:
    with KnowledgeBase.open(INDEX, create=False) as kb:
        payloads = [chunk.payload for chunk in kb.store.scroll(batch=4096)]
        queries = section_titles(kb.store, 300)
    embedder = OnnxEmbedder()
    embedder.load()
    texts = ingested_texts(random.Random(3).sample(payloads, 1500), embedder)
    fp32 = measure(embedder, embedder.onnx_path, texts, queries)
    print(f"fp32: {fp32['rate']:.1f} passages/s, query {fp32['query_p50']:.2f} ms", flush=True)
    rows = []
    for name, keep in VARIANTS.items():
        path, kept = quantised(embedder.onnx_path, name, keep)
        result = measure(embedder, path, texts, queries)
        cosine = (result["vectors"] * fp32["vectors"]).sum(axis=1)
        rows.append((name, kept, result["rate"], result["rate"] / fp32["rate"], result["query_p50"], cosine))
        print(f"{name}: {rows[-1][3]:.2f}x fp32, cosine min {cosine.min():.4f} mean {cosine.mean():.4f}", flush=True)
    lines = [
        "# int8 variants of the embedder: which products to leave in fp32",
        "",
        f"Command: `python scripts/bench_int8.py`. {len(texts):,} random chunks of the PostgreSQL index "
        f"({INDEX.relative_to(REPO)}), {len(queries)} section-title queries, 2 cores, one process, variants "
        "run one after another. fp32: kb's fused export, "
        f"{fp32['rate']:.1f} passages/s, query embedding p50 {fp32['query_p50']:.2f} ms.",
        "",
        "| variant | products kept fp32 | passages/s | ÷ fp32 | query p50 ms | cosine to fp32 min / p1 / mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, kept, rate, ratio, query, cosine in rows:
        lines.append(
            f"| {name} | {kept} | {rate:.1f} | {ratio:.2f}× | {query:.2f} | "
            f"{cosine.min():.4f} / {np.percentile(cosine, 1):.4f} / {cosine.mean():.4f} |"
        )
    lines += [
        "",
        "kb's int8 export (`embedder_backend = \"onnx-int8\"`) keeps layer 0's FFN output in fp32: the FFN",
        "output products are the group int8 spoils most (all six kept fp32 give the best mean, at the least",
        "speed), and of them layer 0's alone helps most, for a small part of the speed-up. Retrieval quality:",
        "`evals/reports/embedder-quality.md`.",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print(f"written {REPORT}")


if __name__ == "__main__":
    main()
