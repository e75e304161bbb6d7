"""Foundation benchmark: ingest throughput per stage, index size, query latency per mode.

    python scripts/bench_foundation.py                 # sample corpus + postgresql-doc-15 (downloaded)
    python scripts/bench_foundation.py --no-postgres   # sample corpus only

The PostgreSQL documentation comes from Debian's ``postgresql-doc-15`` package (``apt-get download``,
extracted with ``dpkg-deb -x``; no root install). Results are printed and written to
``evals/reports/bench-foundation.md``. Figures are not asserted anywhere: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from section_titles import section_titles

from kb import KnowledgeBase
from kb.evaluation.debian import fetch_debian_package
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
REPORT = REPO / "evals" / "reports" / "bench-foundation.md"
HANDWRITTEN = [
    "how do I create an index concurrently",
    "VACUUM FULL locks the table",
    "max_connections",
    "what is a partial index",
    "pg_dump custom format restore",
    "configure streaming replication",
    "row level security policy",
    "ERROR: deadlock detected",
    "jsonb containment operator",
    "shared_buffers recommended size",
]


def debian_corpus(package: str, subdir: str) -> tuple[Path, str]:
    root, version = fetch_debian_package(package, WORK)
    return root / subdir, version


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench(name: str, folder: Path, reuse: bool, queries_wanted: int = 200) -> dict:
    index = WORK / f"index-{name}"
    if not reuse:
        shutil.rmtree(index, ignore_errors=True)
    kb = KnowledgeBase.open(index)
    report = kb.ingest(folder)
    chunks = kb.store.count()
    timings = report.timings
    work_seconds = report.seconds - timings.get("load_model", 0.0)
    result = {
        "name": name,
        "documents": report.documents,
        "skipped": len(report.skipped),
        "chunks": chunks,
        "ingest_s": work_seconds,
        "chunks_per_s": report.chunks_written / work_seconds if report.chunks_written else float("nan"),
        "stages": {k: v for k, v in timings.items() if k != "load_model"},
        "disk_mb": kb.store.disk_bytes() / 1e6,
    }
    # Queries: hand-written ones plus section titles of random chunks (what users type is short).
    rng = random.Random(7)
    titles = section_titles(kb.store)
    queries = (HANDWRITTEN + rng.sample(titles, min(len(titles), queries_wanted)))[:queries_wanted]
    for q in queries[:20]:  # warm up caches and the model
        kb.search(q)
    retrievers = {mode: kb.hybrid_search(k=10, mode=mode) for mode in ("dense", "bm25", "hybrid")}
    samples: dict[str, list[float]] = {key: [] for key in ("embed", "dense", "bm25", "hybrid", "hybrid_store")}
    # Round-robin per query, so machine noise spreads over every mode alike.
    for q in queries:
        tick = time.perf_counter()
        kb.embedder.embed([q])
        samples["embed"].append((time.perf_counter() - tick) * 1e3)
        for mode, retriever in retrievers.items():
            tick = time.perf_counter()
            out = retriever.search(q)
            samples[mode].append((time.perf_counter() - tick) * 1e3)
            if mode == "hybrid":
                samples["hybrid_store"].append(out.timings["retrieve"])
    for key, values in samples.items():
        result[f"{key}_p50"], result[f"{key}_p95"] = percentile(values, 0.5), percentile(values, 0.95)
    result["hybrid_store_p50"] = statistics.median(samples["hybrid_store"])
    kb.close()
    return result


def render(results: list[dict], versions: dict[str, str]) -> str:
    lines = [
        "# Foundation benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}.",
        "Command: `python scripts/bench_foundation.py`. Embedder: all-MiniLM-L6-v2 (torch, CPU), chunk cap 200 tokens.",
        "Corpus versions: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "sample only") + ".",
        "",
        "## Ingest",
        "",
        "| corpus | docs | skipped | chunks | seconds | chunks/s | read+hash+parse s | chunk s | embed s | store s | index MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["stages"]
        lines.append(
            f"| {r['name']} | {r['documents']} | {r['skipped']} | {r['chunks']} | {r['ingest_s']:.1f} | "
            f"{r['chunks_per_s']:.1f} | {s['plan'] + s['parse']:.2f} | {s['chunk']:.2f} | {s['embed']:.1f} | "
            f"{s['store']:.2f} | {r['disk_mb']:.1f} |"
        )
    lines += [
        "",
        "## Query latency (ms, k=10; total = embed + BM25 encode + Qdrant query)",
        "",
        "| corpus | chunks | embed p50 / p95 | dense p50 / p95 | bm25 p50 / p95 | hybrid p50 / p95 | hybrid store-only p50 | hybrid p50 ÷ embed p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['chunks']} | {r['embed_p50']:.1f} / {r['embed_p95']:.1f} | "
            f"{r['dense_p50']:.1f} / {r['dense_p95']:.1f} | {r['bm25_p50']:.2f} / {r['bm25_p95']:.2f} | "
            f"{r['hybrid_p50']:.1f} / {r['hybrid_p95']:.1f} | {r['hybrid_store_p50']:.2f} | "
            f"{r['hybrid_p50'] / r['embed_p50']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL documentation corpus")
    parser.add_argument("--reuse", action="store_true", help="keep indexes from a previous run (latency only)")
    args = parser.parse_args()
    results = [bench("sample", sample_kb_path(), args.reuse)]
    versions: dict[str, str] = {}
    if not args.no_postgres:
        folder, version = debian_corpus("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html")
        versions["postgresql-doc-15"] = version
        results.append(bench("postgresql-doc-15", folder, args.reuse))
    text = render(results, versions)
    if args.reuse:
        print("(--reuse: ingest figures below describe an incremental run; latency figures are valid)")
    else:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
