"""Embedder benchmark: torch vs ONNX Runtime (fp32, int8) on the same real chunks, in one run.

    python scripts/bench_embedder.py            # writes evals/reports/bench-embedder.md

Per backend: passages/s encoding 2,000 chunks of the PostgreSQL documentation (postgresql-doc-15, batches
sorted by length), query embedding p50/p95 over 300 queries, the cosine of each vector to torch's (min, p1,
mean), and the whole ingest of 400 PostgreSQL pages (parse workers, embedding, store) as chunks/s and as a
ratio to the raw torch encoding rate of the same chunks measured in the same run. Then ``kb search`` from a
cold start (process start → hits printed, ``hyperfine``-style: 5 runs each) and whether torch was imported.
Retrieval quality per backend is in the ``kb eval`` reports (evals/reports/python-faq*/), not here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from kb import KnowledgeBase
from kb.embedding import build_embedder
from kb.evaluation.debian import fetch_debian_package
from kb.evaluation.metrics import percentile

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
REPORT = REPO / "evals" / "reports" / "bench-embedder.md"
BACKENDS = ("torch", "onnx", "onnx-int8")


def chunk_texts(folder: Path, index: Path, n: int) -> tuple[list[str], list[str]]:
    """Embedded texts of ``n`` chunks (what the embedder reads) and short queries (section titles)."""
    with KnowledgeBase.open(index, embedder_backend="onnx") as kb:
        if kb.store.count() == 0:
            kb.ingest(folder)
        records = [c.payload for c in kb.store.scroll(batch=1024)]
    rng = random.Random(7)
    sample = rng.sample(records, min(n, len(records)))
    texts = [f"{r['title']}\n{r['text']}" for r in sample]
    queries = [" ".join(r["header_path"][-1:]) or r["title"] for r in rng.sample(records, 300)]
    return texts, queries


def encode_rate(backend: str, texts: list[str]) -> tuple[float, np.ndarray]:
    embedder = build_embedder("all-MiniLM-L6-v2", backend)
    embedder.load()
    embedder.embed(texts[:64])  # warm
    tick = time.perf_counter()
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    return len(texts) / (time.perf_counter() - tick), vectors


def query_latency(backend: str, queries: list[str]) -> tuple[float, float]:
    embedder = build_embedder("all-MiniLM-L6-v2", backend)
    embedder.load()
    for q in queries[:20]:
        embedder.embed([q])
    times = []
    for q in queries:
        tick = time.perf_counter()
        embedder.embed([q])
        times.append((time.perf_counter() - tick) * 1e3)
    return percentile(times, 0.5), percentile(times, 0.95)


def ingest_rate(backend: str, folder: Path, pages: int) -> tuple[float, int, float]:
    subset = WORK / "bench-embedder-pages"
    if not subset.exists():
        subset.mkdir(parents=True)
        for page in sorted(folder.glob("*.html"))[:pages]:
            shutil.copy(page, subset / page.name)
    index = WORK / f"bench-embedder-{backend}"
    shutil.rmtree(index, ignore_errors=True)
    with KnowledgeBase.open(index, embedder_backend=backend) as kb:
        kb.embedder.load()
        tick = time.perf_counter()
        report = kb.ingest(subset)
        seconds = time.perf_counter() - tick
    shutil.rmtree(index, ignore_errors=True)
    return report.chunks_written / seconds, report.chunks_written, seconds


def cold_search(backend: str, index: Path) -> tuple[float, bool]:
    """Seconds from process start to hits printed (median of 5), and whether torch got imported."""
    env = {**os.environ, "KB_EMBEDDER_BACKEND": backend, "HF_HUB_OFFLINE": "1"}
    kb = str(Path(sys.executable).with_name("kb"))
    times = []
    for _ in range(5):
        tick = time.perf_counter()
        subprocess.run([kb, "search", "max_connections", "--kb", str(index), "-k", "3"], env=env,
                       capture_output=True, check=True)  # fmt: skip
        times.append(time.perf_counter() - tick)
    probe = (
        f"import sys, runpy; sys.argv = ['kb', 'search', 'max_connections', '--kb', {str(index)!r}, '-k', '1']\n"
        "try:\n    runpy.run_module('kb.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    return statistics.median(times), "NO-TORCH" not in result.stderr


def main() -> None:
    root, version = fetch_debian_package("postgresql-doc-15", WORK)
    folder = root / "usr/share/doc/postgresql-doc-15/html"
    texts, queries = chunk_texts(folder, WORK / "bench-embedder-corpus", 2000)
    rows, vectors = {}, {}
    for backend in BACKENDS:
        rate, vectors[backend] = encode_rate(backend, texts)
        p50, p95 = query_latency(backend, queries)
        rows[backend] = {"passages_per_s": rate, "query_p50_ms": p50, "query_p95_ms": p95}
        print(backend, rows[backend], flush=True)
    for backend in BACKENDS:
        cos = (vectors[backend] * vectors["torch"]).sum(axis=1)
        rows[backend].update({"cos_min": float(cos.min()), "cos_p1": float(np.percentile(cos, 1)), "cos_mean": float(cos.mean())})
    for backend in BACKENDS:
        rate, chunks, seconds = ingest_rate(backend, folder, 400)
        rows[backend].update({"ingest_chunks_per_s": rate, "ingest_chunks": chunks, "ingest_s": seconds,
                              "ingest_vs_raw_torch": rate / rows["torch"]["passages_per_s"]})  # fmt: skip
        print(backend, "ingest", rate, flush=True)
    for backend in ("onnx", "torch"):
        index = WORK / f"bench-embedder-cold-{backend}"
        if not index.exists():
            with KnowledgeBase.open(index, embedder_backend=backend) as kb:
                kb.ingest(WORK / "bench-embedder-pages")
        rows[backend]["cold_search_s"], rows[backend]["imports_torch"] = cold_search(backend, index)
    lines = [
        "# Embedder: torch vs ONNX Runtime",
        "",
        f"Command: `python scripts/bench_embedder.py` (2 cores, CPU only). Corpus: postgresql-doc-15 {version}.",
        f"{len(texts)} chunks (title + text, what the embedder reads), 300 queries (section titles).",
        "",
        "| backend | passages/s | query p50 / p95 ms | cos to torch min / p1 / mean | ingest chunks/s (400 pages) | ingest ÷ raw torch | `kb search` cold start s | imports torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, r in rows.items():
        cold = f"{r['cold_search_s']:.2f}" if "cold_search_s" in r else "—"
        torch_row = ("yes" if r["imports_torch"] else "no") if "imports_torch" in r else "—"
        lines.append(
            f"| {backend} | {r['passages_per_s']:.1f} | {r['query_p50_ms']:.2f} / {r['query_p95_ms']:.2f} | "
            f"{r['cos_min']:.4f} / {r['cos_p1']:.4f} / {r['cos_mean']:.5f} | {r['ingest_chunks_per_s']:.1f} "
            f"({r['ingest_chunks']} in {r['ingest_s']:.0f} s) | {r['ingest_vs_raw_torch']:.2f} | {cold} | {torch_row} |"
        )
    lines += ["", "Raw data:", "", "```json", json.dumps(rows, indent=1), "```"]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"written {REPORT}")


if __name__ == "__main__":
    main()
