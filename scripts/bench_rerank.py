"""Reranking latency: torch vs int8 ONNX Runtime, 20 and 30 candidates, with a MiniLM-L6-sized cross-encoder.

    python scripts/bench_rerank.py [--model FOLDER] [--runs 40]

No cross-encoder weights are reachable offline, so by default the model is the bundled MiniLM-L6 (6 layers,
384 wide: the size of ms-marco-MiniLM-L-6-v2) with a fresh classification head: latency depends on the
architecture and the pair lengths, not on the weights. Candidates are real chunks of the sample knowledge
base (up to 200 tokens each), queries are its questions. Prints a table and writes
``evals/reports/bench-rerank.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase
from kb.evaluation.metrics import percentile
from kb.reranking import CrossEncoderReranker, RerankerBackend
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "rerank"
REPORT = REPO / "evals" / "reports" / "bench-rerank.md"


def minilm_cross_encoder(target: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kb.embedding import resolve_model_path

    if (target / "config.json").exists():
        return target
    source = resolve_model_path("all-MiniLM-L6-v2")
    config = BertConfig.from_pretrained(str(source), num_labels=1)
    BertForSequenceClassification.from_pretrained(str(source), config=config).save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 128], help="Pair lengths (tokens).")
    args = parser.parse_args()
    model = args.model or minilm_cross_encoder(WORK / "minilm-l6-cross-encoder")
    with KnowledgeBase.open(WORK / "index") as kb:
        if not kb.manifest.documents:
            kb.ingest(sample_kb_path())
        questions = [
            "What does error E4012 mean and how do I fix it?",
            "How do I rotate an API key?",
            "How do I roll back a bad deployment of billing-svc?",
            "Who is paged for a SEV-1 incident?",
        ]
        pools = {q: [h.text for h in kb.search(q, k=30)] for q in questions}
    (model / "model-int8.onnx").unlink(missing_ok=True)  # measure the export too
    tick = time.perf_counter()
    CrossEncoderReranker.load(model, backend=RerankerBackend.ONNX)
    export_s = time.perf_counter() - tick
    onnx_mb = (model / "model-int8.onnx").stat().st_size / 1e6
    rows = []
    for backend, length in [(b, n) for n in args.lengths for b in (RerankerBackend.TORCH, RerankerBackend.ONNX)]:
        reranker = CrossEncoderReranker.load(model, backend=backend, batch_size=32, max_length=length)
        name = f"{'torch' if backend is RerankerBackend.TORCH else 'onnx int8'}, {length} tokens"
        for n in (20, 30):
            for q in questions:  # warm up
                reranker.score(q, pools[q][:n])
            times = []
            for i in range(args.runs):
                q = questions[i % len(questions)]
                start = time.perf_counter()
                reranker.score(q, pools[q][:n])
                times.append((time.perf_counter() - start) * 1e3)
            times.sort()
            rows.append((name, n, statistics.median(times), percentile(times, 0.95)))
    lines = [
        "# Reranking latency",
        "",
        f"Model: {model.name} (6 layers, hidden 384; pairs truncated to the length in each row). Command: "
        f"`python scripts/bench_rerank.py`. {os.cpu_count()} cores, CPU only, batch 32, {args.runs} runs per row, "
        f"candidates are sample-KB chunks of up to 200 tokens. ONNX export + int8 quantization: {export_s:.1f} s "
        f"once ({onnx_mb:.1f} MB).",
        "",
        "| backend, pair length | candidates | p50 ms | p95 ms |",
        "|---|---|---|---|",
        *[f"| {name} | {n} | {p50:.1f} | {p95:.1f} |" for name, n, p50, p95 in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    REPORT.write_text(text)


if __name__ == "__main__":
    main()
