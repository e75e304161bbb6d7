"""HTTP memory soak: ``kb serve`` answers 10,000 mixed requests while its memory is sampled.

    python scripts/soak_http.py                         # the sample knowledge base, 10,000 requests
    python scripts/soak_http.py --requests 2000 --env MALLOC_ARENA_MAX=2

Four client threads send, in turn: /search (plain, with a filter, with a large k), /ask (extractive: the
generator is not what is measured), /ask with ``stream: true`` cut after its first event (the client
hangs up mid-answer), and bad requests (an empty query, k = 0: 4xx). Every 500 requests the server
process's RSS is read from /proc, split into anon (heap, arenas) and file (mapped shard segments and model
weights). Prints a table and writes ``evals/reports/soak-http.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kb", type=Path, default=REPO / ".bench" / "http" / "sample-index")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server process")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    with KnowledgeBase.open(args.kb) as kb:
        if not kb.manifest.documents:
            kb.ingest(sample_kb_path())
        chunks = kb.store.count()
    extra = dict(item.split("=", 1) for item in args.env)
    rows: list[tuple[int, dict[str, float]]] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    sent = [0]
    with served(args.kb, extra) as (base, server):
        rows.append((0, process_memory(server.pid)))

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
                            print(done, rows[-1][1], flush=True)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    settled = rows[len(rows) // 5][1]  # after warm-up: a fifth of the run
    last = rows[-1][1]
    flags = " ".join(f"--env {e}" for e in args.env)
    lines = [
        "# HTTP memory soak",
        "",
        f"`python scripts/soak_http.py --requests {args.requests}{' ' + flags if flags else ''}` on {args.kb.name} "
        f"({chunks:,} chunks), {args.clients} clients, {os.cpu_count()} cores. Mix per 10 requests: 3 /search "
        "(plain, filtered, k=50), 3 /ask (extractive), 2 /ask streams cut after the first event, 2 bad requests.",
        f"Statuses: {dict(sorted(statuses.items()))}.",
        "",
        "| requests | RSS MB | anon MB | file MB |",
        "|---|---|---|---|",
        *(f"| {n} | {m['rss_mb']:.0f} | {m['anon_mb']:.0f} | {m['file_mb']:.0f} |" for n, m in rows),
        "",
        f"After warm-up ({rows[len(rows) // 5][0]} requests) → end: RSS {settled['rss_mb']:.0f} → "
        f"{last['rss_mb']:.0f} MB, anon {settled['anon_mb']:.0f} → {last['anon_mb']:.0f} MB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.report.write_text(text)
    if any(s >= 500 for s in statuses):
        sys.exit("server errors (5xx) during the soak")


if __name__ == "__main__":
    main()
