"""Queries for benchmarks: the section titles of indexed chunks (what users type is short).

    section_titles(kb.store, 300)     # 300 random chunks' titles, the same ones on every run (seed 7)
"""

from __future__ import annotations

import random
from typing import Any


def section_title(payload: dict[str, Any]) -> str:
    """A chunk's own heading (the last of its header path), or its document's title when it has none."""
    return " ".join(payload["header_path"][-1:]) or payload["title"]


def section_titles(store: Any, count: int | None = None, seed: int = 7) -> list[str]:
    """The titles of ``count`` random chunks of ``store`` (a ``ChunkStore``), or of all of them in store order."""
    payloads = [chunk.payload for chunk in store.scroll(batch=4096)]
    if count is not None:
        payloads = random.Random(seed).sample(payloads, count)
    return [section_title(payload) for payload in payloads]
