"""HTTP API benchmark: /search and /ask (extractive) under 1, 4 and 16 concurrent clients on loopback, next to
the same calls made in-process by as many threads.

    python scripts/bench_http.py                                # the sample knowledge base (built here)
    python scripts/bench_http.py --kb .bench/reindex/index      # an existing index (e.g. postgresql-doc-15)
    python scripts/bench_http.py --qdrant-url local --report evals/reports/bench-http-server.md
                                                                # the server backend (qdrant-client local mode)

``kb serve`` runs as its own process (one uvicorn worker, its default thread pool); the clients are threads
with one httpx connection each. Every level sends a bounded number of requests. Prints a table and writes
``evals/reports/bench-http.md``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

from kb import KnowledgeBase, Principal
from kb.evaluation.metrics import percentile
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "bench-http.md"
KEY = "bench-key-0123456789abcdef"
QUERIES = [
    "What does error E4012 mean and how do I fix it?",
    "How many times is a failed charge retried by default?",
    "How do I rotate an API key?",
    "billing.retry_limit",
    "How do I verify a webhook signature?",
    "What happens when I exceed the API rate limit?",
    "How do I create an index concurrently?",
    "What does VACUUM FULL do?",
]


def run_level(clients: int, requests: int, call: Callable[[int, int], None]) -> dict[str, float]:
    """``clients`` threads share ``requests`` calls; returns throughput and latency percentiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def worker(index: int) -> None:
        mine = []
        for n in range(per_client[index]):
            tick = time.perf_counter()
            call(index, n)
            mine.append((time.perf_counter() - tick) * 1e3)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "rps": len(latencies) / wall,
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "n": len(latencies),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(index: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``kb serve`` on ``index`` as its own process (extractive answers, one read key in group eng), ready:
    yields its base URL and the process; stops it on exit."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "kb.cli", "serve", "--kb", str(index), "--port", str(port)],
        env={
            **os.environ,
            "KB_API_KEYS": f'[{{"key": "{KEY}", "role": "read", "groups": ["eng"]}}]',
            "KB_LLM_BACKEND": "extractive",
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None:
                    raise RuntimeError(f"kb serve exited: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.2)
        yield base, server
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kb", type=Path, default=REPO / ".bench" / "http" / "sample-index")
    parser.add_argument("--search-requests", type=int, default=320)
    parser.add_argument("--ask-requests", type=int, default=96)
    parser.add_argument("--qdrant-url", default="", help="the server backend: a URL, or 'local' (local mode)")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    if args.qdrant_url:
        os.environ["KB_QDRANT_URL"] = args.qdrant_url  # the server process and the in-process side alike
        if args.kb == parser.get_default("kb"):
            args.kb = REPO / ".bench" / "http" / "sample-index-server"
    levels = (1, 4, 16)

    with KnowledgeBase.open(args.kb) as kb:
        if not kb.manifest.documents:
            kb.ingest(sample_kb_path())
        if any(entry.acl is None for entry in kb.manifest.documents.values()):
            sys.exit(f"{args.kb} predates access control: run `kb reindex DOCS --kb {args.kb}` once to stamp ACLs")
        documents, chunks = len(kb.manifest.documents), kb.store.count()

    results: dict[tuple[str, str, int], dict[str, float]] = {}
    with served(args.kb) as (base, _server):
        sessions = [httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}) for _ in range(16)]
        for session in sessions:  # warm up: model load, connections
            session.post("/search", json={"query": "warm up"}, timeout=120).raise_for_status()

        def http(path: str, field: str) -> Callable[[int, int], None]:
            def call(client: int, n: int) -> None:
                body = {field: QUERIES[(client + n) % len(QUERIES)]}
                sessions[client].post(path, json=body, timeout=120).raise_for_status()

            return call

        for clients in levels:
            results[("http", "search", clients)] = run_level(clients, args.search_requests, http("/search", "query"))
            results[("http", "ask", clients)] = run_level(clients, args.ask_requests, http("/ask", "question"))
        for session in sessions:
            session.close()

    with KnowledgeBase.open(args.kb, llm_backend="extractive") as kb:
        user = Principal(groups=["eng"])  # the same reader as the HTTP key
        kb.search("warm up", user=user)
        for clients in levels:
            results[("in-process", "search", clients)] = run_level(
                clients, args.search_requests, lambda c, n: kb.search(QUERIES[(c + n) % len(QUERIES)], user=user)
            )
            results[("in-process", "ask", clients)] = run_level(
                clients, args.ask_requests, lambda c, n: kb.ask(QUERIES[(c + n) % len(QUERIES)], user=user)
            )

    lines = [
        "# HTTP API benchmark",
        "",
        f"Index: {args.kb} ({documents:,} documents, {chunks:,} chunks). Command: `python scripts/bench_http.py"
        f"{' --kb ' + str(args.kb) if args.kb != parser.get_default('kb') else ''}"
        f"{' --qdrant-url ' + args.qdrant_url if args.qdrant_url else ''}`. {os.cpu_count()} cores, "
        "CPU only; server and clients share the machine. /ask is extractive (no LLM). Both sides ask as a reader "
        "in group eng (the ACL filter runs in every query).",
        f"Requests per level: /search {args.search_requests}, /ask {args.ask_requests}.",
        "",
        "| call | clients | HTTP req/s | HTTP p50 ms | HTTP p95 ms | in-process req/s | in-process p50 ms | in-process p95 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op in ("search", "ask"):
        for clients in levels:
            h, p = results[("http", op, clients)], results[("in-process", op, clients)]
            lines.append(
                f"| /{op} | {clients} | {h['rps']:.1f} | {h['p50']:.1f} | {h['p95']:.1f} | "
                f"{p['rps']:.1f} | {p['p50']:.1f} | {p['p95']:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    if args.qdrant_url == "local":
        text += (
            "\nStore: qdrant-client local mode, the server backend's stand-in: its searches are brute force in Python, "
            "so these figures show kb's own locking and overhead on the server path, not a Qdrant server's speed.\n"
        )
    print(text)
    args.report.write_text(text)


if __name__ == "__main__":
    main()
