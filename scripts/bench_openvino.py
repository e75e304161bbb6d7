"""What the OpenVINO embedder costs besides its speed: memory per input shape, process memory, and its rate
without bfloat16.

    python scripts/bench_openvino.py        # writes evals/reports/bench-openvino.md

1. Memory after a query of every length from 1 to 255 words (what a server sees), each backend in a fresh
   process: ONNX Runtime, OpenVINO as kb runs it (power-of-two sub-batches, 16-token widths), and OpenVINO fed
   the exact shapes (OpenVINO keeps compiled kernels per input shape).
2. Resident memory of a process that loaded the embedder and answered 200 queries, per backend.
3. Encoding rate of 640 PostgreSQL chunks (indexes/postgres): ONNX Runtime fp32, OpenVINO at its default
   precision for this CPU, and OpenVINO forced to f32 (what a CPU without bf16 gets).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "bench-openvino.md"

PROBE = r"""
import json, sys
from kb.embedding import OnnxEmbedder, OpenVinoEmbedder
variant = sys.argv[1]
embedder = OnnxEmbedder() if variant == "onnx" else OpenVinoEmbedder()
if variant == "openvino-exact-shapes":  # ONNX Runtime's batches: each text's own length
    OpenVinoEmbedder._batches, OpenVinoEmbedder._width = OnnxEmbedder._batches, OnnxEmbedder._width
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
embedder.embed(["warm up"])
loaded = rss()
for n in range(1, 256):
    embedder.embed([" ".join(["word"] * n)])
every_length = rss()
for i in range(200):
    embedder.embed([f"how do I rotate the API key of service {i} before it leaks"])
print(json.dumps({"loaded_mb": loaded, "every_length_mb": every_length - loaded, "after_queries_mb": rss()}))
"""


def memory(variant: str) -> dict[str, float]:
    shown = subprocess.run([sys.executable, "-c", PROBE, variant], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    return json.loads(shown.stdout.strip().splitlines()[-1])


def rates() -> dict[str, float]:
    from kb import KnowledgeBase
    from kb.embedding import OnnxEmbedder, OpenVinoEmbedder

    with KnowledgeBase.open(REPO / "indexes" / "postgres", create=False) as kb:
        texts = [hit.payload["text"] for _, hit in zip(range(640), kb.store.scroll(None), strict=False)]
    out = {}
    for name, embedder in [("onnx fp32", OnnxEmbedder()), ("openvino default", OpenVinoEmbedder()),
                           ("openvino f32", OpenVinoEmbedder(precision="f32"))]:  # fmt: skip
        embedder.embed(texts[:64])
        tick = time.perf_counter()
        embedder.embed(texts)
        out[name] = len(texts) / (time.perf_counter() - tick)
    out["default precision"] = OpenVinoEmbedder().precision
    return out


def main() -> None:
    mem = {variant: memory(variant) for variant in ("onnx", "openvino", "openvino-exact-shapes")}
    rate = rates()
    lines = [
        "# OpenVINO embedder: memory and precision",
        "",
        "Command: `python scripts/bench_openvino.py` (2 cores, CPU only; each memory figure from a fresh process).",
        "",
        "| embedder | resident MB after loading | + MB after a query of every length (1–255 words) | resident MB after 200 more queries |",
        "|---|---|---|---|",
    ]
    for variant, m in mem.items():
        lines.append(f"| {variant} | {m['loaded_mb']:.0f} | +{m['every_length_mb']:.0f} | {m['after_queries_mb']:.0f} |")
    lines += [
        "",
        f"Encoding rate, 640 PostgreSQL chunks (OpenVINO's default precision on this CPU: {rate['default precision']}):",
        "",
        "| embedder | passages/s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.1f} |" for name, value in rate.items() if name != "default precision"]
    lines += ["", "Raw data:", "", "```json", json.dumps({"memory": mem, "rates": rate}, indent=1), "```"]
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
