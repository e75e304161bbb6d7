"""The sample-set regression gate: retrieval and extractive answers on the bundled sample knowledge base.

    python evals/gate.py --record     # measure and write evals/sample-gate.json (after an intended change)
    python evals/gate.py              # measure and compare with the recorded values

tests/test_eval_gate.py runs the same measurement in CI and fails when fused hit@5 or citation precision
falls below the recorded value.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase, Settings
from kb.evaluation.gold import GoldResolver
from kb.evaluation.questions import load_questions
from kb.evaluation.report import summarize
from kb.evaluation.runner import KbSystem, run
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
GATE = REPO / "evals" / "sample-gate.json"
SET = REPO / "evals" / "sets" / "sample.jsonl"
GATED = ("fused hit@5", "citation_precision")


def measure(kb: KnowledgeBase) -> dict[str, float]:
    """Gate figures for an index of the sample corpus (answers are extractive: deterministic)."""
    kb.use_llm(None)
    questions = load_questions(SET)
    rows = run(KbSystem(kb), questions, GoldResolver(sample_kb_path()), answer_ids={q.id for q in questions})
    summary = summarize(rows)
    answers = summary["answers"]
    return {
        "fused hit@5": summary["stages"]["fused"]["hit@5"],
        "fused ndcg@10": summary["stages"]["fused"]["ndcg@10"],
        "dense hit@5": summary["stages"]["dense"]["hit@5"],
        "bm25 hit@5": summary["stages"]["bm25"]["hit@5"],
        "citation_precision": answers["citation_precision"],
        "answer_support": answers["answer_support"],
        "refusal_recall": answers["refusal_recall"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true", help="write the measured values as the new gate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, KnowledgeBase.open(Path(tmp) / "idx", Settings()) as kb:
        kb.ingest(sample_kb_path())
        figures = measure(kb)
    print(json.dumps(figures, indent=1))
    if args.record:
        GATE.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"recorded in {GATE}")
    else:
        recorded = json.loads(GATE.read_text())
        for key in GATED:
            print(f"{key}: {figures[key]:.4f} (recorded {recorded[key]:.4f})")


if __name__ == "__main__":
    main()
