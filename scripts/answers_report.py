"""Ask the sample knowledge base its question set and judge each answer against the gold sections.

    python scripts/answers_report.py                         # the backend the settings pick (local Qwen when installed)
    KB_LLM_BACKEND=extractive python scripts/answers_report.py

For every question: the answer, its citations, whether a cited section overlaps the gold section
("supported"), and for questions the corpus cannot answer, whether kb refused. Timings per stage (time to
first token, total) are summarised. Writes ``evals/reports/answers-sample-<backend>.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase
from kb.evaluation.gold import GoldRef, GoldResolver
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = REPO / "evals" / "sets" / "sample.jsonl"


def main() -> None:
    index = REPO / ".bench" / "index-sample-answers"
    kb = KnowledgeBase.open(index)
    kb.ingest(sample_kb_path())
    resolver = GoldResolver(sample_kb_path())
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    rows, first_tokens, totals = [], [], []
    started = time.perf_counter()
    for q in questions:
        answer = kb.ask(q["question"])
        gold = [GoldRef(g["doc_id"], g.get("header_path", "")) for g in q["gold"]]
        on_gold = [resolver.hits(c.path, c.span.start, c.span.end, gold) for c in answer.citations]
        if q["answerable"]:
            verdict = "supported" if any(on_gold) else ("refused" if answer.refused else "NOT supported")
        else:
            verdict = "correctly refused" if answer.refused else "answered (should refuse)"
        if "first_token" in answer.timings:
            first_tokens.append(answer.timings["first_token"])
        totals.append(answer.timings["total"])
        cites = "; ".join(
            f"[{c.number}] {c.doc_id}:{c.span.line_start}-{c.span.line_end} {c.header_path}{' ✓' if ok else ''}"
            for c, ok in zip(answer.citations, on_gold, strict=True)
        )
        rows.append((q["id"], q["question"], answer.text, cites or "—", verdict, answer.timings))
        print(f"{q['id']}: {verdict}  ({answer.timings['total'] / 1e3:.1f}s)", file=sys.stderr)
    backend = kb.answer_engine().backend
    answerable = [r for r, q in zip(rows, questions, strict=True) if q["answerable"]]
    unanswerable = [r for r, q in zip(rows, questions, strict=True) if not q["answerable"]]
    supported = sum(r[4] == "supported" for r in answerable)
    refused_ok = sum(r[4] == "correctly refused" for r in unanswerable)
    cited_total = sum(r[3].count("[") for r in answerable)
    cited_gold = sum(r[3].count("✓") for r in answerable)
    lines = [
        f"# Answers on the sample knowledge base — {backend}",
        "",
        f"Command: `python scripts/answers_report.py` ({len(questions)} questions from `evals/sets/sample.jsonl`, "
        f"{len(unanswerable)} not answerable from the corpus). Wall time {time.perf_counter() - started:.0f} s on "
        f"{os.cpu_count()} cores.",
        "",
        f"- answerable questions whose answer cites the gold section: **{supported}/{len(answerable)}**",
        f"- citations that point into a gold section: **{cited_gold}/{cited_total}**",
        f"- unanswerable questions refused: **{refused_ok}/{len(unanswerable)}**",
        f"- time to first token p50 {_p(first_tokens, 0.5)} ms, p95 {_p(first_tokens, 0.95)} ms; "
        f"total p50 {_p(totals, 0.5)} ms, p95 {_p(totals, 0.95)} ms",
        "",
        "| id | question | answer | citations (✓ = in the gold section) | verdict | first token / total ms |",
        "|---|---|---|---|---|---|",
    ]
    for qid, question, text, cites, verdict, t in rows:
        cell = text.replace("|", "\\|").replace("\n", " ")
        timing = f"{t.get('first_token', 0):.0f} / {t['total']:.0f}"
        lines.append(f"| {qid} | {question} | {cell} | {cites.replace('|', '/')} | {verdict} | {timing} |")
    report = REPO / "evals" / "reports" / f"answers-sample-{backend.split()[0].lower()}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    kb.close()


def _p(values: list[float], q: float) -> str:
    if not values:
        return "—"
    return f"{statistics.quantiles(values, n=100)[int(q * 100) - 1]:.0f}" if len(values) > 1 else f"{values[0]:.0f}"


if __name__ == "__main__":
    main()
