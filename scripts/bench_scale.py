"""Scale benchmark: a real 100k-chunk knowledge base, then the store alone up to 1M chunks.

    python scripts/bench_scale.py                       # everything; writes evals/reports/bench-scale.md
    python scripts/bench_scale.py --skip-ingest         # reuse .bench/scale/index (queries, reindex, 1M)
    python scripts/bench_scale.py --resume              # an interrupted ingest goes on from its last source
    python scripts/bench_scale.py --skip-ingest --sizes 10000 100000 1000000   # fewer store-alone sizes
    python scripts/bench_scale.py --stages store local  # one stage again; --render rewrites the report

1. **Real corpus, many sources**: the Debian documentation of Python (python3.11-doc), PostgreSQL
   (postgresql-doc-15), Node.js (nodejs-doc) and Rust (rust-doc: the API pages of core and alloc, without
   core::arch's 17,000 per-CPU intrinsic stubs; then git-doc while under 100,000 chunks), ingested from scratch
   (``--resume`` goes on after the last source an interrupted run finished): time, chunks/s, disk, peak RSS.
2. On that index: hybrid (convex, as configured) / dense / bm25 query latency, p50 and p95 over 300 queries,
   with and without an ACL filter (a principal who may read half of the sources), next to the query embedding
   time alone; open time; reindex of everything with nothing changed, and with one document changed.
3. **The store alone at 10k → 1M chunks**: the real chunks' payloads and sparse vectors re-used under new ids,
   their dense vectors perturbed (Gaussian noise, renormalised) — an embedded shard per size, optimised, then
   dense / bm25 / fused query latency with and without a filter, disk and open time. And qdrant-client's local
   mode (the server's API without a server) at 10k and 30k chunks: brute force in Python, shown to say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from procmem import process_memory
from section_titles import section_title

from kb import KnowledgeBase, Principal
from kb.evaluation.debian import fetch_debian_package
from kb.evaluation.metrics import percentile
from kb.settings import FusionMethod, RetrievalMode
from kb.sparse import Bm25Encoder
from kb.store.base import HybridQuery, StoredPoint
from kb.store.edge import EdgeChunkStore

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "scale"
REPORT = REPO / "evals" / "reports" / "bench-scale.md"
TARGET_CHUNKS = 100_000
RUST_BOOKS = ["book", "reference", "rust-by-example", "nomicon", "edition-guide", "rustc", "rustdoc", "embedded-book",
              "unstable-book"]  # fmt: skip
SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000)


def corpus() -> dict[str, tuple[Path, list[str], list[str]]]:
    """Source name → (folder, include globs, extra exclude globs)."""
    python, _ = fetch_debian_package("python3.11-doc", REPO / ".bench")
    postgres, _ = fetch_debian_package("postgresql-doc-15", REPO / ".bench")
    node, _ = fetch_debian_package("nodejs-doc", REPO / ".bench")
    rust, _ = fetch_debian_package("rust-doc", REPO / ".bench")
    git, _ = fetch_debian_package("git-doc", REPO / ".bench")
    rust_html = rust / "usr/share/doc/rust-doc/html"
    return {
        "python": (python / "usr/share/doc/python3.11/html/_sources", ["*.rst.txt"], []),
        "postgres": (postgres / "usr/share/doc/postgresql-doc-15/html", ["*.html"], []),
        "node": (node / "usr/share/doc/nodejs/api", ["*.html"], []),
        # The API pages of core and alloc (std re-exports them: its pages would say it all again), without
        # core::arch's 17,000 near-identical per-CPU intrinsic stubs: 11,000 pages, ~65k chunks.
        "rust": (rust_html, ["*.html"], ["arch", "std", "src", "test", "proc_macro", *RUST_BOOKS]),
        # Then Git's manual while the index is under 100,000 chunks (Rust's books share rust's folder, and one
        # folder is one source).
        "git": (git / "usr/share/doc/git-doc", ["*.html"], []),
    }


def ingest(index: Path, done: dict[str, dict], save: Callable[[dict[str, dict]], None]) -> dict:
    """Ingest the sources in turn, each timed alone; ``done`` holds the rows of sources an interrupted run
    finished (kept, not redone), and ``save`` is called with the rows after each source."""
    if not done:
        shutil.rmtree(index, ignore_errors=True)
    sources = corpus()
    exclude = [".*", "print.html", "toc.html", "all.html", "search-index*", "*.js", "sidebar-items*", "src"]
    rows = dict(done)
    with KnowledgeBase.open(index, exclude=exclude) as kb:
        for name in set(kb.sources) - set(sources):  # a source an older version of this script chose
            kb.remove_source(name)
        for name, (folder, include, extra) in sources.items():
            if name not in kb.sources:
                kb.add_source(name, folder, include=include, exclude=[*exclude, *extra])
        kb.embedder.load()
        for name in sources:
            if name in rows:
                continue
            if kb.manifest.of_source(name):  # a run cut inside this source: time it from the start
                kb.remove_source(name)
                kb.add_source(name, sources[name][0], include=sources[name][1], exclude=[*exclude, *sources[name][2]])
            tick = time.perf_counter()
            report = kb.reindex(source=name, progress=lambda d, t, _n: None)
            rows[name] = {"documents": len(report.added), "chunks": report.chunks_written,
                          "seconds": time.perf_counter() - tick, "skipped": len(report.skipped)}  # fmt: skip
            print(name, rows[name], flush=True)
            save(rows)
            if kb.store.count() >= TARGET_CHUNKS:
                break
        chunks = kb.store.count()
        disk = kb.store.disk_bytes()
        embedder = kb.identity.backend
    seconds = sum(r["seconds"] for r in rows.values())
    return {"sources": rows, "chunks": chunks, "seconds": seconds, "chunks_per_s": chunks / seconds,
            "disk_mb": disk / 1e6, "peak_rss_mb": process_memory()["peak_mb"], "embedder": embedder}  # fmt: skip


def query_figures(index: Path) -> dict:
    tick = time.perf_counter()
    kb = KnowledgeBase.open(index, create=False)
    opened = time.perf_counter() - tick
    records = [c.payload for c in kb.store.scroll(batch=2048)]
    queries = [section_title(r) for r in random.Random(7).sample(records, 300)]
    sources = sorted({r["source"] for r in records})
    reader = Principal(groups=("half",))
    for name in sources[: len(sources) // 2]:
        kb.update_source(name, acl=["half"])
    kb.reindex(allow_mass_delete=False)  # ACL-only: payload updates
    out: dict = {"open_s": opened, "chunks": len(records)}
    embed = []
    for q in queries:
        t = time.perf_counter()
        kb.embedder.embed([q])
        embed.append((time.perf_counter() - t) * 1e3)
    out["embed_ms"] = {"p50": percentile(embed, 0.5), "p95": percentile(embed, 0.95)}
    # One untimed pass first: the ACL change above rewrote the shard's segments, and a server answers from
    # warm pages; otherwise whichever mode is timed first pays for reading them in.
    for q in queries:
        kb.search(q, k=10, mode="hybrid", user=reader)
        kb.search(q, k=10, mode="hybrid")
    for mode in ("hybrid", "dense", "bm25"):
        for user, label in ((None, "all"), (reader, "acl")):
            times = []
            for q in queries:
                t = time.perf_counter()
                kb.search(q, k=10, mode=mode, user=user)
                times.append((time.perf_counter() - t) * 1e3)
            out[f"{mode} {label}"] = {"p50": percentile(times, 0.5), "p95": percentile(times, 0.95)}
            print(mode, label, out[f"{mode} {label}"], flush=True)
    biggest = max(sources, key=lambda s: sum(1 for r in records if r["source"] == s))
    tick = time.perf_counter()
    kb.reindex()
    out["reindex_nothing_s"] = time.perf_counter() - tick
    entries = sorted(e.path for e in kb.manifest.of_source(biggest).values())
    victim = Path(kb.sources[biggest].path) / entries[len(records) % len(entries)]
    backup = victim.read_bytes()
    try:
        victim.write_bytes(backup + b"\n<!-- touched by bench_scale -->\n" if victim.suffix == ".html" else backup + b"\n\ntouched.\n")
        tick = time.perf_counter()
        report = kb.reindex()
        out["reindex_one_s"] = time.perf_counter() - tick
        out["reindex_one_summary"] = report.summary()
    finally:
        victim.write_bytes(backup)
        kb.reindex()
    out["documents"] = len(kb.manifest.documents)
    out["documents_in_source"] = len(kb.manifest.of_source(biggest))
    out["source"] = biggest
    kb.close()
    return out


def store_scaling(index: Path, sizes: tuple[int, ...], save: Callable[[list[dict]], None]) -> list[dict]:
    """Embedded shards of growing size from the real points (new ids, perturbed dense vectors); ``save`` gets
    the rows after each size."""
    kb = KnowledgeBase.open(index, create=False)
    base = list(kb.store.scroll_points(batch=2048))
    bm25 = Bm25Encoder()
    texts = [" ".join(p.payload["header_path"][-1:]) or "x" for p in random.Random(3).sample(base, 200)]
    queries = [kb.embedder.embed([text])[0] for text in texts]
    sparse = [bm25.embed_query(text) for text in texts]
    kb.close()
    rng = np.random.default_rng(11)
    rows = []
    for size in sizes:
        folder = WORK / f"store-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        store = EdgeChunkStore(folder / "shard", 384, bm25)
        store.ensure_payload_indexes([])
        tick = time.perf_counter()
        written = 0
        while written < size:
            batch = []
            for point in base[: min(len(base), size - written)]:
                noise = np.asarray(point.dense, dtype=np.float32) + rng.normal(0, 0.02, 384).astype(np.float32)
                noise /= np.linalg.norm(noise)
                payload = {**point.payload, "acl": ["half"] if written % 2 else ["__public__"]}
                batch.append(StoredPoint(f"{written:08x}-0000-4000-8000-000000000000", noise.tolist(), point.sparse, payload))
                written += 1
                if len(batch) == 2048:
                    store.upsert(batch)
                    batch = []
            store.upsert(batch)
        upsert_s = time.perf_counter() - tick
        tick = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - tick
        row = {"size": size, "upsert_s": upsert_s, "optimize_s": optimize_s, "disk_mb": store.disk_bytes() / 1e6,
               "rss_mb": process_memory()["rss_mb"]}  # fmt: skip
        for mode, fusion in ((RetrievalMode.DENSE, FusionMethod.WEIGHTED), (RetrievalMode.BM25, FusionMethod.WEIGHTED),
                             (RetrievalMode.HYBRID, FusionMethod.CONVEX), (RetrievalMode.HYBRID, FusionMethod.WEIGHTED)):  # fmt: skip
            for readable, label in ((None, "all"), (["__public__"], "acl")):
                times = []
                for dense, bm in zip(queries, sparse, strict=True):
                    plan = HybridQuery(limit=10, dense=dense, sparse=bm, mode=mode, fusion=fusion, weights=(0.7, 0.3),
                                       readable=readable, text="x")  # fmt: skip
                    t = time.perf_counter()
                    store.search(plan)
                    times.append((time.perf_counter() - t) * 1e3)
                key = f"{mode.value}{'-' + fusion.value if mode is RetrievalMode.HYBRID else ''} {label}"
                row[key] = {"p50": percentile(times, 0.5), "p95": percentile(times, 0.95)}
        store.close()
        tick = time.perf_counter()
        reopened = EdgeChunkStore(folder / "shard", 384, bm25)
        row["open_s"] = time.perf_counter() - tick
        reopened.close()
        print(row, flush=True)
        rows.append(row)
        save(rows)
        shutil.rmtree(folder, ignore_errors=True)
        gc.collect()
    return rows


def local_mode(index: Path) -> list[dict]:
    from qdrant_client import QdrantClient

    from kb.store.server import ServerChunkStore

    kb = KnowledgeBase.open(index, create=False)
    base = list(kb.store.scroll_points(batch=2048))
    query = kb.embedder.embed(["configure streaming replication"])[0]
    kb.close()
    rows = []
    for size in (10_000, 30_000):
        store = ServerChunkStore(QdrantClient(location=":memory:"), f"bench{size}", 384, Bm25Encoder())
        for start in range(0, size, 1024):
            store.upsert(base[start : start + 1024])
        times = []
        for _ in range(30):
            t = time.perf_counter()
            store.search(HybridQuery(limit=10, dense=query, mode=RetrievalMode.DENSE))
            times.append((time.perf_counter() - t) * 1e3)
        rows.append({"size": size, "dense p50 ms": percentile(times, 0.5), "dense p95 ms": percentile(times, 0.95)})
        store.close()
        print(rows[-1], flush=True)
    return rows


STAGES = ("ingest", "queries", "store", "local")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="what to (re)measure")
    parser.add_argument("--skip-ingest", action="store_true", help="every stage but the ingest")
    parser.add_argument("--resume", action="store_true", help="keep the sources an interrupted ingest finished")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="store-alone sizes, chunks")
    parser.add_argument("--render", action="store_true", help="only rewrite the report from .bench/scale/figures.json")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (what shared the machine)")
    args = parser.parse_args()
    stages = [] if args.render else [s for s in args.stages if not (args.skip_ingest and s == "ingest")]
    index = WORK / "index"
    WORK.mkdir(parents=True, exist_ok=True)
    figures_path = WORK / "figures.json"
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}

    def save(key: str, value: object) -> None:  # after every step: a cut run keeps what it measured
        figures[key] = value
        figures_path.write_text(json.dumps(figures, indent=1))

    if not args.render:
        command = " ".join(["python scripts/bench_scale.py", *sys.argv[1:]])
        save("commands", {**figures.get("commands", {}), **dict.fromkeys(stages, command)})
        save("notes", args.note or figures.get("notes", []))
    if "ingest" in stages:
        save("ingest", ingest(index, figures.get("ingest_rows", {}) if args.resume else {}, partial(save, "ingest_rows")))
    if "queries" in stages:
        save("queries", query_figures(index))
    if "store" in stages:
        save("store", store_scaling(index, tuple(args.sizes), partial(save, "store")))
    if "local" in stages:
        save("local_mode", local_mode(index))
    REPORT.write_text(render(figures))
    plot(figures["store"])
    print(f"written {REPORT}")


def render(f: dict) -> str:
    ing, q = f["ingest"], f["queries"]
    lines = [
        f"# Scale: {ing['chunks']:,} real chunks, the store alone to {max(r['size'] for r in f['store']):,}",
        "",
        "Commands: " + "; ".join(f"`{c}` ({', '.join(s for s, d in f['commands'].items() if d == c)})"
                                 for c in dict.fromkeys(f["commands"].values())) + f" (2 cores, 24 GB, CPU only; embedder backend: {ing.get('embedder', 'onnx')}).",
        "",
        *[f"Note: {n}" for n in f["notes"]],
        *([""] if f["notes"] else []),
        f"## A real knowledge base of {len(ing['sources'])} sources",
        "",
        "| source | documents | chunks | seconds | chunks/s |",
        "|---|---|---|---|---|",
        *[f"| {n} | {r['documents']} | {r['chunks']} | {r['seconds']:.0f} | {r['chunks'] / r['seconds']:.1f} |" for n, r in ing["sources"].items()],
        f"| **all** | | **{ing['chunks']:,}** | **{ing['seconds']:.0f}** | **{ing['chunks_per_s']:.1f}** |",
        "",
        f"Disk {ing['disk_mb']:.0f} MB, peak RSS {ing['peak_rss_mb']:.0f} MB; open {q['open_s']:.2f} s.",
        "",
        f"Queries at {q['chunks']:,} chunks, 300 section titles, ms p50 / p95 (query embedding alone: "
        f"{q['embed_ms']['p50']:.1f} / {q['embed_ms']['p95']:.1f}):",
        "",
        "| mode | everything | with an ACL filter (half the sources) |",
        "|---|---|---|",
        *[f"| {m} | {q[m + ' all']['p50']:.1f} / {q[m + ' all']['p95']:.1f} | {q[m + ' acl']['p50']:.1f} / {q[m + ' acl']['p95']:.1f} |" for m in ("hybrid", "dense", "bm25")],
        "",
        f"Reindex of the whole knowledge base ({q['documents']:,} documents in {len(ing['sources'])} source{'s' if len(ing['sources']) > 1 else ''}; "
        f"`{q['source']}` {q['documents_in_source']:,}): nothing changed {q['reindex_nothing_s']:.2f} s; one document "
        f"of `{q['source']}` changed {q['reindex_one_s']:.2f} s ({q['reindex_one_summary']}).",
        "",
        "## The store alone (embedded engine), real payloads, perturbed vectors",
        "",
        "| chunks | upsert s | optimise s | disk MB | open s | dense all | dense acl | bm25 all | hybrid-convex all | hybrid-convex acl | hybrid-weighted all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in f["store"]:
        def ms(key: str, row: dict = r) -> str:
            return f"{row[key]['p50']:.1f} / {row[key]['p95']:.1f}"

        lines.append(
            f"| {r['size']:,} | {r['upsert_s']:.0f} | {r['optimize_s']:.0f} | {r['disk_mb']:.0f} | {r['open_s']:.2f} | "
            f"{ms('dense all')} | {ms('dense acl')} | {ms('bm25 all')} | {ms('hybrid-convex all')} | {ms('hybrid-convex acl')} | {ms('hybrid-weighted all')} |"
        )
    lines += [
        "",
        "Latencies are ms p50 / p95 of the store query (no embedding). `latency-vs-size.png` plots them.",
        "",
        "## The server path here: qdrant-client's local mode",
        "",
        "Local mode is brute force in Python (no HNSW, no payload indexes): it stands in for a server in the tests, "
        "never for data. A real Qdrant server keeps the same HNSW engine the embedded one measures above, plus a "
        "network hop; Qdrant's own single-node benchmark (qdrant.tech/benchmarks, 8 CPUs, 1M–10M vectors) is the "
        "reference for a server's throughput.",
        "",
        "| chunks | dense p50 ms | dense p95 ms |",
        "|---|---|---|",
        *[f"| {r['size']:,} | {r['dense p50 ms']:.0f} | {r['dense p95 ms']:.0f} |" for r in f["local_mode"]],
        "",
        "Raw data (`scripts/bench_summary.py` reads it):",
        "",
        "```json",
        json.dumps({k: v for k, v in f.items() if k != "ingest_rows"}, indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("dense all", "dense acl", "bm25 all", "hybrid-convex all", "hybrid-weighted all"):
        ax.plot([r["size"] for r in rows], [r[key]["p50"] for r in rows], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("chunks")
    ax.set_ylabel("store query p50, ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(REPORT.parent / "latency-vs-size.png", dpi=110)


if __name__ == "__main__":
    main()
