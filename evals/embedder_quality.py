"""Retrieval quality of the embedder backends side by side, on the tune splits (where defaults are chosen).

    python evals/embedder_quality.py                    # indexes of each backend under .bench/embedder-quality/
    python evals/embedder_quality.py --reuse onnx=indexes-fp32 onnx-int8=indexes   # folders already built
    python evals/embedder_quality.py --backends onnx openvino --reuse onnx=indexes \
        --report evals/reports/embedder-quality-openvino.md

For each backend (ONNX fp32, ONNX int8, OpenVINO; torch's vectors equal fp32's, cosine 1.0000) every tune set's
corpus is indexed with that backend, and the dense leg, the BM25 leg and kb's default fusion are ranked for each
tune question (:mod:`evals.tune_fusion`'s candidates): nDCG@10 and hit@5 per set, and each backend's difference
to the first. Issue 16's bar for another default: nDCG@10 within 0.005 of fp32 on python-faq and
python-faq-xref. Writes ``evals/reports/embedder-quality.md`` (or ``--report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.tune_fusion import DEFAULT, SETS, candidates, collect, score
from kb import KnowledgeBase
from kb.evaluation.gold import GoldResolver
from kb.evaluation.questions import load_questions

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "embedder-quality.md"
BACKENDS = ("onnx", "onnx-int8")
RANKINGS = ("dense only", "bm25 only", DEFAULT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", nargs="*", default=[], help="BACKEND=FOLDER: index folders already built")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), help="the first is the reference")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    backends = tuple(args.backends)
    folders = {b: REPO / ".bench" / "embedder-quality" / b for b in backends} | {
        b: REPO / f for b, f in (item.split("=", 1) for item in args.reuse)
    }
    fusions = {name: fusion for name, fusion in candidates().items() if name in RANKINGS}
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {b: {} for b in backends}
    for backend in backends:
        for set_name, (path, index, corpus) in SETS.items():
            questions = [q for q in load_questions(REPO / path) if q.split == "tune" and q.answerable]
            if not questions:
                continue
            folder = folders[backend] / Path(index).name
            with KnowledgeBase.open(folder, embedder_backend=backend) as kb:
                if kb.store.count() == 0:
                    kb.ingest(REPO / corpus)
                pool = collect(kb, questions)
            resolver = GoldResolver(REPO / corpus)
            table[backend][set_name] = {name: score(resolver, pool, fusion)[0] for name, fusion in fusions.items()}
            print(backend, set_name, table[backend][set_name][DEFAULT], flush=True)
    args.report.write_text(render(table, folders, " ".join(sys.argv[1:])))
    print(f"written {args.report}")


def render(table: dict, folders: dict[str, Path], arguments: str = "") -> str:
    backends = list(table)
    sets = list(table[backends[0]])
    command = f"python evals/embedder_quality.py {arguments}".strip()
    lines = [
        "# Embedder backends: retrieval quality on the tune splits",
        "",
        f"Command: `{command}` (indexes: "
        + ", ".join(f"{b} {folders[b].relative_to(REPO) if folders[b].is_relative_to(REPO) else folders[b]}" for b in backends)
        + "). nDCG@10 / hit@5 per ranking; kb's default fusion is "
        f"`{DEFAULT}`. fp32 ONNX gives torch's vectors (cosine 1.0000, `evals/reports/bench-embedder.md`).",
        "",
        "| set | ranking | " + " | ".join(backends) + " | "
        + " | ".join(f"{b} − {backends[0]} nDCG@10" for b in backends[1:]) + " |",
        "|---|---|" + "---|" * (2 * len(backends) - 1),
    ]
    for set_name in sets:
        for name in RANKINGS:
            cells = [table[b][set_name][name] for b in backends]
            deltas = " | ".join(f"{c['ndcg@10'] - cells[0]['ndcg@10']:+.3f}" for c in cells[1:])
            shown = " | ".join(f"{c['ndcg@10']:.3f} / {c['hit@5']:.3f}" for c in cells)
            lines.append(f"| {set_name} | {name} | {shown} | {deltas} |")
    means = {b: sum(table[b][s][DEFAULT]["ndcg@10"] for s in sets) / len(sets) for b in backends}
    lines += ["", "Mean nDCG@10 of the default fusion over the sets: "
              + ", ".join(f"{b} {m:.3f}" for b, m in means.items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
