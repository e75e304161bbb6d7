"""The shipping gate for an offline cross-encoder: on python-faq and python-faq-xref the reranked stage must beat
the fused stage by ≥ ``--min-gain`` nDCG@10 (0.03, issue 15's bar for a ``kb tune`` model; attempts 1 and 2 were
gated at 0.02) with no drop in hit@3, the verdict rule of ``kb tune``'s own gate (:func:`kb.tuning.gate.verdict`). Decisions are taken on the **tune** split (``--split``,
default tune): choosing among models or blends by their test figures would leak the test set into the choice;
run once with ``--split test`` for the report of the model that was chosen.

    python -m evals.reranker.gate --model .bench/reranker/att2-residual --blend 0.5

Runs ``kb eval`` once per set (retrieval only, no baseline) with the model as ``reranker_model`` and default
reranking settings otherwise (``reranker_candidates`` 20, int8 ONNX, 256-token pairs), in parallel, then prints
the figures and the verdict and writes ``gate.md`` into ``--out``. The sets' indexes must exist
(``python evals/build_python_sets.py`` and the ``kb eval`` commands in ``evals/README.md`` build them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from kb.tuning.gate import MIN_GAIN, Figures, GateThresholds, verdict

REPO = Path(__file__).resolve().parents[2]
SETS = {
    "python-faq": ("evals/sets/python-faq.jsonl", "indexes/python-faq"),
    "python-faq-xref": ("evals/sets/python-faq-xref.jsonl", "indexes/python-docs-nofaq"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--blend", type=float, default=None, help="reranker_blend (default: the model's card)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <model>/gate)")
    parser.add_argument("--split", choices=("tune", "test"), default="tune", help="questions the gate reads")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN, help="nDCG@10 over fused needed on each set")
    args = parser.parse_args()
    out = args.out or args.model / "gate"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KB_RERANKER_MODEL": str(args.model.resolve()), "OMP_NUM_THREADS": "1"}
    if args.blend is not None:
        env["KB_RERANKER_BLEND"] = str(args.blend)
    kb = str(Path(sys.executable).with_name("kb"))
    jobs = {
        name: subprocess.Popen(
            [kb, "eval", question_set, "--kb", index, "--no-baseline", "--split", args.split, "--report", str(out / name)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (question_set, index) in SETS.items()
    }
    rows, passed = [], True
    for name, job in jobs.items():
        _, stderr = job.communicate()
        if job.returncode:
            for other in jobs.values():  # never leave a sibling holding an index open
                other.kill()
            raise SystemExit(f"kb eval {name} failed:\n{stderr[-2000:]}")
        summary = json.loads((out / name / "summary.json").read_text())
        stages = summary["summary"]["kb"]["stages"]
        fused, reranked = stages["fused"], stages["reranked"]
        gain = reranked["ndcg@10"] - fused["ndcg@10"]
        ok, _ = verdict(figures(fused), figures(reranked), GateThresholds(args.min_gain), 1, args.blend or 1.0)
        passed &= ok
        rows.append(
            f"| {name} | {fused['hit@3']:.3f} | {reranked['hit@3']:.3f} | {fused['ndcg@10']:.3f} | "
            f"{reranked['ndcg@10']:.3f} | {gain:+.3f} | {'pass' if ok else 'fail'} |"
        )
        reranker = summary["context"]["kb setup"]["reranker"]
    text = "\n".join(
        [
            f"# Gate: {args.model.name}",
            "",
            f"Split: {args.split}.",
            "",
            f"Reranker: {json.dumps(reranker)}",
            "",
            "| set | fused hit@3 | reranked hit@3 | fused nDCG@10 | reranked nDCG@10 | gain | verdict |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Verdict: **{'PASS' if passed else 'FAIL'}** (needs ≥ +{args.min_gain} nDCG@10 and no hit@3 drop on both).",
        ]
    )
    (out / "gate.md").write_text(text + "\n")
    print(text)


def figures(stage: dict) -> Figures:
    """kb eval's stage figures as the tune gate's."""
    return Figures(stage["ndcg@10"], stage.get("hit@1", 0.0), stage["hit@3"], stage.get("mrr@10", 0.0))


if __name__ == "__main__":
    main()
