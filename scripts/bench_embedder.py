"""Embedder benchmark: torch vs ONNX Runtime (fp32, int8) vs OpenVINO on the same real chunks, in one run.

    python scripts/bench_embedder.py            # writes evals/reports/bench-embedder.md

Per backend: the whole ingest of 400 PostgreSQL pages (postgresql-doc-15: parse workers, embedding, store) as
chunks/s, and the raw encoding rate of exactly the texts that ingest embedded (title, header path and chunk,
recorded from the run; batches sorted by length) — the ingest's ratio to raw torch is the figure of issue 16;
the cosine of each vector to torch's (min, p1, mean); query embedding p50/p95 over 300 queries (section
titles), back to back and after 50 ms idle (what a server sees between requests: its threads have slept).
Then ``kb search`` from a cold start (process start → hits printed, 5 runs each) and whether torch or
LlamaIndex was imported. Retrieval quality per backend is measured by ``kb eval`` (evals/reports/).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from section_titles import section_titles

from kb import EmbedderMismatchError, KnowledgeBase
from kb.embedding import build_embedder
from kb.evaluation.debian import fetch_debian_package
from kb.evaluation.metrics import percentile

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
REPORT = REPO / "evals" / "reports" / "bench-embedder.md"
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")


def queries_of(index: Path) -> list[str]:
    """300 short queries: section titles of the indexed pages."""
    with KnowledgeBase.open(index, create=False) as kb:
        return section_titles(kb.store, 300)


def encode_rate(backend: str, texts: list[str]) -> tuple[float, np.ndarray]:
    embedder = build_embedder("all-MiniLM-L6-v2", backend)
    embedder.load()
    embedder.embed(texts[:64])  # warm
    tick = time.perf_counter()
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    return len(texts) / (time.perf_counter() - tick), vectors


def query_latency(backend: str, queries: list[str], idle: float) -> tuple[float, float]:
    embedder = build_embedder("all-MiniLM-L6-v2", backend)
    embedder.load()
    for q in queries[:20]:
        embedder.embed([q])
    times = []
    for q in queries:
        if idle:
            time.sleep(idle)
        tick = time.perf_counter()
        embedder.embed([q])
        times.append((time.perf_counter() - tick) * 1e3)
    return percentile(times, 0.5), percentile(times, 0.95)


def ingest(backend: str, folder: Path, pages: int, keep: Path | None = None) -> tuple[float, int, float, list[str]]:
    """Chunks/s of a whole ingest of ``pages`` pages, and the texts it embedded (recorded on the way)."""
    subset = WORK / "bench-embedder-pages"
    if not subset.exists():
        subset.mkdir(parents=True)
        for page in sorted(folder.glob("*.html"))[:pages]:
            shutil.copy(page, subset / page.name)
    index = keep or WORK / f"bench-embedder-{backend}"
    shutil.rmtree(index, ignore_errors=True)
    embedded: list[str] = []
    with KnowledgeBase.open(index, embedder_backend=backend) as kb:
        kb.embedder.load()
        inner = kb.embedder.embed

        def recording(texts: list[str]) -> list[list[float]]:
            embedded.extend(texts)
            return inner(texts)

        kb.embedder.embed = recording  # type: ignore[method-assign]
        tick = time.perf_counter()
        report = kb.ingest(subset)
        seconds = time.perf_counter() - tick
    if keep is None:
        shutil.rmtree(index, ignore_errors=True)
    return report.chunks_written / seconds, report.chunks_written, seconds, embedded


def opens(index: Path, backend: str) -> bool:
    try:
        with KnowledgeBase.open(index, create=False, embedder_backend=backend):
            return True
    except EmbedderMismatchError:
        return False


def cold_search(backend: str, index: Path) -> tuple[float, str]:
    """Seconds from process start to hits printed (median of 5), and which heavy packages got imported."""
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
        "heavy = {'torch', 'sentence_transformers', 'llama_index'} & {m.split('.')[0] for m in sys.modules}\n"
        "print('IMPORTED', ','.join(sorted(heavy)) or 'none', file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    imported = next((line.split(" ", 1)[1] for line in result.stderr.splitlines() if line.startswith("IMPORTED")), "?")
    return statistics.median(times), imported


def main() -> None:
    root, version = fetch_debian_package("postgresql-doc-15", WORK)
    folder = root / "usr/share/doc/postgresql-doc-15/html"
    rows: dict[str, dict] = {}
    texts: list[str] = []
    for backend in BACKENDS:
        rate, chunks, seconds, embedded = ingest(backend, folder, 400, WORK / "bench-embedder-cold" if backend == "onnx" else None)
        texts = texts or embedded
        rows[backend] = {"ingest_chunks_per_s": rate, "ingest_chunks": chunks, "ingest_s": seconds}
        print(backend, "ingest", rate, flush=True)
    queries = queries_of(WORK / "bench-embedder-cold")
    vectors = {}
    for backend in BACKENDS:
        rate, vectors[backend] = encode_rate(backend, texts)
        rows[backend]["passages_per_s"] = rate
        rows[backend]["query_p50_ms"], rows[backend]["query_p95_ms"] = query_latency(backend, queries, 0.0)
        rows[backend]["idle_query_p50_ms"], rows[backend]["idle_query_p95_ms"] = query_latency(backend, queries, 0.05)
        print(backend, rows[backend], flush=True)
    for backend in BACKENDS:
        cos = (vectors[backend] * vectors["torch"]).sum(axis=1)
        rows[backend].update({"cos_min": float(cos.min()), "cos_p1": float(np.percentile(cos, 1)), "cos_mean": float(cos.mean()),
                              "ingest_vs_raw_torch": rows[backend]["ingest_chunks_per_s"] / rows["torch"]["passages_per_s"]})  # fmt: skip
    for backend in ("onnx", "onnx-int8", "openvino", "torch"):
        index = WORK / f"bench-embedder-cold-{backend}"
        if index.exists() and not opens(index, backend):
            shutil.rmtree(index)  # built by a kb whose export differed: the index refuses it, as it should
        if not index.exists():
            with KnowledgeBase.open(index, embedder_backend=backend) as kb:
                kb.ingest(WORK / "bench-embedder-pages")
        rows[backend]["cold_search_s"], rows[backend]["imports"] = cold_search(backend, index)
    lines = [
        "# Embedder: torch vs ONNX Runtime vs OpenVINO",
        "",
        f"Command: `python scripts/bench_embedder.py` (2 cores, CPU only). Corpus: postgresql-doc-15 {version}, the "
        f"first 400 pages ({rows['onnx']['ingest_chunks']} chunks); raw encoding of the {len(texts)} texts that ingest "
        "embedded; 300 queries (section titles).",
        "",
        "| backend | ingest chunks/s (400 pages) | raw encoding passages/s | ingest ÷ raw torch | query p50 / p95 ms, back to back "
        "| after 50 ms idle | cos to torch min / p1 / mean | `kb search` cold start s | imports |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, r in rows.items():
        lines.append(
            f"| {backend} | {r['ingest_chunks_per_s']:.1f} ({r['ingest_chunks']} in {r['ingest_s']:.0f} s) | "
            f"{r['passages_per_s']:.1f} | {r['ingest_vs_raw_torch']:.2f} | {r['query_p50_ms']:.2f} / {r['query_p95_ms']:.2f} | "
            f"{r['idle_query_p50_ms']:.2f} / {r['idle_query_p95_ms']:.2f} | "
            f"{r['cos_min']:.4f} / {r['cos_p1']:.4f} / {r['cos_mean']:.5f} | {r['cold_search_s']:.2f} | {r['imports']} |"
        )
    lines += ["", "Raw data:", "", "```json", json.dumps(rows, indent=1), "```"]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"written {REPORT}")


if __name__ == "__main__":
    main()
