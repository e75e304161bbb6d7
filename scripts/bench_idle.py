"""Why a query embedding takes longer after an idle pause: kb's embedder next to plain CPU work, same pauses.

    python scripts/bench_idle.py        # writes evals/reports/bench-idle.md (about 2 minutes)

A server embeds one query after another with pauses in between. bench_embedder measured 2.7 ms back to back
and 6.9 ms after 50 ms idle for the ONNX embedder. This script times, after pauses of 0, 50 and 500 ms, the
query embedding with one and with two intra-op threads, and controls that involve no kb code at all: numpy
matrix products on one thread (nothing to wake) over 2.4 MB of weights and over 92 MB — what the fp32 model
reads for every query, since a few-token query is a matrix-vector product per layer, bound by memory — and a
pure-Python loop. If the controls slow down too, the pause costs the machine (caches, TLB, a virtual CPU
halted by the host), not the embedder's threads.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the numpy control runs on one thread: nothing to wake

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from section_titles import section_titles

from kb import KnowledgeBase
from kb.embedding import build_embedder
from kb.evaluation.metrics import percentile
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "bench-idle.md"
PAUSES = (0.0, 0.05, 0.5)
RUNS = 100


def timed(work: Callable[[], object], pause: float) -> tuple[float, float]:
    for _ in range(10):
        work()
    times = []
    for _ in range(RUNS):
        if pause:
            time.sleep(pause)
        tick = time.perf_counter()
        work()
        times.append((time.perf_counter() - tick) * 1e3)
    return percentile(times, 0.5), percentile(times, 0.95)


def main() -> None:
    with KnowledgeBase.open(REPO / ".bench" / "bench-idle-index") as kb:  # the bundled sample KB, indexed once
        if not kb.manifest.documents:
            kb.reindex(sample_kb_path())
        titles = section_titles(kb.store)
    queries = iter(random.Random(7).choices(titles, k=100_000))
    rng = np.random.default_rng(7)
    weights, rows = rng.random((384, 1536), dtype=np.float32), rng.random((12, 384), dtype=np.float32)
    model_sized = rng.random((384, 60_000), dtype=np.float32)  # 92 MB: the fp32 model's weights
    work: dict[str, Callable[[], object]] = {}
    for threads in (1, 2):
        embedder = build_embedder("all-MiniLM-L6-v2", "onnx", threads=threads)
        embedder.load()
        work[f"query embedding, ONNX fp32, {threads} intra-op thread{'s' * (threads > 1)}"] = (
            lambda e=embedder: e.embed([next(queries)])
        )
    work["control: numpy 12×384 @ 384×1536, 6 times (2.4 MB of weights, 1 thread)"] = lambda: [
        rows @ weights for _ in range(6)
    ]
    work["control: numpy 1×384 @ 384×60000 (92 MB of weights, as the model, 1 thread)"] = lambda: rows[:1] @ model_sized
    work["control: pure Python, sum(range(20000))"] = lambda: sum(range(20000))
    results = {name: [timed(fn, pause) for pause in PAUSES] for name, fn in work.items()}
    header = " | ".join(f"after {pause * 1e3:.0f} ms idle" if pause else "back to back" for pause in PAUSES)
    lines = [
        "# Query latency after an idle pause",
        "",
        f"Command: `python scripts/bench_idle.py`. {os.cpu_count()} cores, machine otherwise idle; p50 / p95 ms over "
        f"{RUNS} runs per cell (section titles of the sample KB as queries).",
        "",
        f"| work | {header} | slowdown at 500 ms |",
        "|---|" + "---|" * (len(PAUSES) + 1),
    ]
    for name, cells in results.items():
        shown = " | ".join(f"{p50:.2f} / {p95:.2f}" for p50, p95 in cells)
        lines.append(f"| {name} | {shown} | {cells[-1][0] / cells[0][0]:.1f}× |")
    text = "\n".join(lines) + "\n"
    REPORT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
