"""Child process for the crash tests: reindex, and SIGKILL itself at a chosen point.

    python tests/crash_child.py INDEX DOCS POINT N [--full]

POINT names a method whose N-th call is the last thing this process does (it dies right after the call
returns): ``upsert``, ``delete_version``, ``manifest_write`` (a manifest commit), ``swap`` (after the shard
moved, before the rest). ``hold`` opens the index and sleeps (for the lock tests); ``none`` runs to
completion, printing ``progress DONE/TOTAL`` after each document (the external-kill test waits for it).
The wrapping lives here, in test code: kb itself has no crash hooks.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kb.manifest as manifest_module
import kb.store.edge as edge
from kb import KnowledgeBase, Settings
from kb.store.edge import EdgeChunkStore


def die_after(owner: object, name: str, n: int) -> None:
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    index, docs, point, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    full = "--full" in sys.argv
    settings = Settings(chunk_max_tokens=64, chunk_min_tokens=8)
    if point == "hold":
        with KnowledgeBase.open(index, settings):
            print("holding", flush=True)
            time.sleep(600)
        return
    targets = {
        "upsert": (EdgeChunkStore, "upsert"),
        "delete_version": (EdgeChunkStore, "delete_version"),
        "manifest_write": (manifest_module.Manifest, "commit"),
    }
    if point in targets:
        die_after(*targets[point], n)
    if point == "swap":
        # Die after the N-th file move inside swap_in (the shard moved, the manifest not yet).
        original_swap, original_replace = edge.swap_in, os.replace
        moves = {"n": 0}

        def counting_replace(src, dst):
            original_replace(src, dst)
            moves["n"] += 1
            if moves["n"] >= n:
                os.kill(os.getpid(), signal.SIGKILL)

        def swap_in(folder):
            edge.os.replace = counting_replace
            original_swap(folder)

        edge.swap_in = swap_in
    with KnowledgeBase.open(index, settings) as kb:
        kb.use_llm(None)
        report = kb.reindex(docs, full=full, progress=lambda done, total, _: print(f"progress {done}/{total}", flush=True))
        print("finished", report.summary(), flush=True)


if __name__ == "__main__":
    main()
