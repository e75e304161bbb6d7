"""HTTP memory soak: ``kb serve`` answers 10,000 mixed requests while its memory is sampled.

    python scripts/soak_http.py                         # the sample knowledge base, 10,000 requests
    python scripts/soak_http.py --requests 2000 --env MALLOC_ARENA_MAX=2
    python scripts/soak_http.py --trace                 # + what grew on the Python heap (tracemalloc)

Four client threads send, in turn: /search (plain, with a filter, with a large k), /ask (extractive: the
generator is not what is measured), /ask with ``stream: true`` cut after its first event (the client
hangs up mid-answer), and bad requests (an empty query, k = 0: 4xx). Every 500 requests the server
process's RSS is read from /proc, split into anon (heap, arenas) and file (mapped shard segments and model
weights). Prints a table and writes ``evals/reports/soak-http.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
from bench_http import KEY, QUERIES, served
from procmem import process_memory

from kb import KnowledgeBase
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "soak-http.md"


def request(session: httpx.Client, n: int) -> int:
    """The n-th request of the mix; returns its status (a cut stream counts as 200)."""
    query = QUERIES[n % len(QUERIES)] + ("" if n % 3 else f" variant {n % 97}")
    kind = n % 10
    if kind <= 2:
        body = {"query": query, "k": 50 if kind == 2 else 5}
        if kind == 1:
            body["filters"] = {"kind": "runbook"}
        return session.post("/search", json=body).status_code
    if kind <= 5:
        return session.post("/ask", json={"question": query}).status_code
    if kind <= 7:
        with session.stream("POST", "/ask", json={"question": query, "stream": True}) as response:
            for _ in response.iter_raw():
                break  # hang up mid-answer
            return response.status_code
    bad = {"query": ""} if kind == 8 else {"query": query, "k": 0}
    return session.post("/search", json=bad).status_code


def snapshot(server_pid: int, folder: Path, n: int) -> None:
    """Ask the traced server for heap snapshot ``n`` and wait until it is written (scripts/memtrace)."""
    os.kill(server_pid, signal.SIGUSR1)
    path = folder / f"snapshot-{n}.pickle"
    deadline = time.time() + 300
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"the server wrote no {path.name}")
        time.sleep(0.2)


def heap_growth(first: Path, last: Path, top: int = 12) -> list[str]:
    """The allocation sites whose live bytes grew most from ``first`` to ``last``, as report lines."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    before = tracemalloc.Snapshot.load(str(first)).filter_traces(ignore)
    after = tracemalloc.Snapshot.load(str(last)).filter_traces(ignore)
    total = sum(s.size for s in after.statistics("filename")) - sum(s.size for s in before.statistics("filename"))
    lines = [f"Python heap (tracemalloc), {first.stem} → {last.stem}: {total / 1e6:+.2f} MB in all.", ""]
    lines += ["| grew | blocks | where (innermost kb/library frame last) |", "|---|---|---|"]
    for stat in after.compare_to(before, "traceback")[:top]:
        frames = " ← ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[:4])
        lines.append(f"| {stat.size_diff / 1e3:+.0f} KB | {stat.count_diff:+d} | {frames} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kb", type=Path, default=REPO / ".bench" / "http" / "sample-index")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server process")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--trace", action="store_true", help="trace the server's Python heap; slower")
    args = parser.parse_args()
    with KnowledgeBase.open(args.kb) as kb:
        if not kb.manifest.documents:
            kb.ingest(sample_kb_path())
        chunks = kb.store.count()
        recorded = kb.identity.backend
    extra = dict(item.split("=", 1) for item in args.env)
    backend = extra.get("KB_EMBEDDER_BACKEND", recorded)  # what the server runs: the index's, unless set for it
    traces = Path(tempfile.mkdtemp(prefix="kb-memtrace-"))
    if args.trace:
        here = str(Path(__file__).resolve().parent / "memtrace")
        extra |= {"KB_MEMTRACE_DIR": str(traces), "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    rows: list[tuple[int, dict[str, float]]] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    sent = [0]
    with served(args.kb, extra) as (base, server):
        rows.append((0, process_memory(server.pid)))
        if args.trace:
            snapshot(server.pid, traces, 0)

        def client() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as session:
                while True:
                    with lock:
                        n = sent[0]
                        if n >= args.requests:
                            return
                        sent[0] += 1
                    status = request(session, n)
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1
                        done = sum(statuses.values())
                        if done % args.every == 0:
                            rows.append((done, process_memory(server.pid)))
                            if args.trace:
                                snapshot(server.pid, traces, len(rows) - 1)
                            print(done, rows[-1][1], flush=True)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    settled = rows[len(rows) // 5][1]  # after warm-up: a fifth of the run
    last = rows[-1][1]
    flags = " ".join([*(f"--env {e}" for e in args.env), *(["--trace"] if args.trace else [])])
    lines = [
        "# HTTP memory soak",
        "",
        f"`python scripts/soak_http.py --requests {args.requests}{' ' + flags if flags else ''}` on {args.kb.name} "
        f"({chunks:,} chunks, embedder backend {backend}), {args.clients} clients, {os.cpu_count()} cores. Mix per 10 requests: 3 /search "
        "(plain, filtered, k=50), 3 /ask (extractive), 2 /ask streams cut after the first event, 2 bad requests. "
        "The server is `kb serve` as shipped: glibc malloc arenas capped at 2 (`kb.api.cap_malloc_arenas`) unless "
        "`MALLOC_ARENA_MAX` is set.",
        f"Statuses: {dict(sorted(statuses.items()))}.",
        "",
        "| requests | RSS MB | anon MB | file MB | threads |",
        "|---|---|---|---|---|",
        *(f"| {n} | {m['rss_mb']:.0f} | {m['anon_mb']:.0f} | {m['file_mb']:.0f} | {m['threads']:.0f} |" for n, m in rows),
        "",
        f"After warm-up ({rows[len(rows) // 5][0]} requests) → end: RSS {settled['rss_mb']:.0f} → "
        f"{last['rss_mb']:.0f} MB, anon {settled['anon_mb']:.0f} → {last['anon_mb']:.0f} MB.",
    ]
    if args.trace:
        lines += ["", *heap_growth(traces / f"snapshot-{len(rows) // 5}.pickle", traces / f"snapshot-{len(rows) - 1}.pickle")]
    text = "\n".join(lines) + "\n"
    print(text)
    args.report.write_text(text)
    if any(s >= 500 for s in statuses):
        sys.exit("server errors (5xx) during the soak")


if __name__ == "__main__":
    main()
