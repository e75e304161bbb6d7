"""A process's memory from /proc, split the way a leak hunt needs it (shared by the benchmark scripts).

``anon`` is heap and arenas (what a leak grows); ``file`` is mapped files such as the Qdrant shard's
segments and the model weights, pages the kernel can drop under pressure and that count in RSS only while
mapped and touched.
"""

from __future__ import annotations

import sys
from pathlib import Path


def process_memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM (peak RSS) in MB, and the thread count; the Python heap's blocks too for ``self``."""
    fields = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb", "VmHWM": "peak_mb", "Threads": "threads"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")  # "VmRSS:\t  1234 kB"
        if name in fields:
            value = int(rest.split()[0])
            out[fields[name]] = value if name == "Threads" else value / 1024
    if pid == "self":
        out["py_blocks"] = float(sys.getallocatedblocks())
    return out
