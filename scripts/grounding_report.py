"""Validate kb's groundedness check (kb.grounding) against a reader's labels, on the sample knowledge base.

    python scripts/grounding_report.py            # ask the sample set with the local Qwen, keep the answers, judge
    python scripts/grounding_report.py --reuse    # judge the kept answers again (no generation: after a change
                                                  # to kb.grounding or to the labels)

Every question of ``evals/sets/sample.jsonl`` is asked with ``refuse_unsupported`` off, so the drafts the
refusal would withhold are judged too. The answers and the text of every source the generator read are kept in
``evals/reports/grounding-validation.jsonl``. Each sentence's verdict from ``kb.grounding.support`` is compared
with the label a person gave it after reading the sentence and its sources
(``evals/sets/sample-grounding-labels.jsonl``: ``{"id", "sentence", "supported", "why"}``; ``supported``: every
claim of the sentence is stated by a source it cites, or by any source when it cites none). Writes
``evals/reports/grounding-validation.md``: agreement, how many unsupported sentences the check catches and how
many it flags wrongly, and the answers ``refuse_unsupported`` refuses against the ones a reader would.
Sentences without a label are listed, so a new model's answers show what is left to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import KnowledgeBase
from kb.grounding import Numbered, SentenceSupport, support, ungrounded
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = REPO / "evals" / "sets" / "sample.jsonl"
LABELS = REPO / "evals" / "sets" / "sample-grounding-labels.jsonl"
ANSWERS = REPO / "evals" / "reports" / "grounding-validation.jsonl"
REPORT = REPO / "evals" / "reports" / "grounding-validation.md"


def generate(index: Path) -> list[dict]:
    """The sample set's answers, drafts included, with the sources each was written from."""
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    kb = KnowledgeBase.open(index, refuse_unsupported=False)
    kb.ingest(sample_kb_path())
    rows = []
    for q in questions:
        answer = kb.ask(q["question"])
        rows.append(
            {
                "id": q["id"],
                "question": q["question"],
                "answerable": q["answerable"],
                "refused": answer.refused,
                "refusal_reason": answer.refusal_reason,
                "text": answer.text,
                "sources": [{"number": s.number, "doc_id": s.doc_id, "text": s.text} for s in answer.sources],
            }
        )
        print(f"{q['id']}: {'refused' if answer.refused else 'answered'}", file=sys.stderr)
    backend = kb.answer_engine().backend
    kb.close()
    rows = [r | {"backend": backend} for r in rows]
    ANSWERS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def verdict(check: SentenceSupport) -> str:
    if not check.is_claim:
        return "no claim"
    return "supported" if check.supported else "unsupported"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help=f"judge the answers kept in {ANSWERS.name}")
    parser.add_argument("--index", type=Path, default=REPO / ".bench" / "index-sample-answers")
    args = parser.parse_args()
    rows = [json.loads(line) for line in ANSWERS.read_text().splitlines()] if args.reuse else generate(args.index)
    labels = {}
    for line in LABELS.read_text().splitlines() if LABELS.exists() else []:
        if line.strip():
            label = json.loads(line)
            labels[(label["id"], label["sentence"])] = label

    table, unlabelled = [], []
    counts = {"agree": 0, "labelled": 0, "caught": 0, "missed": 0, "false_flags": 0, "unsupported": 0}
    answers = {"both": 0, "rule_only": 0, "reader_only": 0, "judged": 0}
    for row in rows:
        if row["refused"]:
            continue
        sources = [Numbered(s["number"], s["text"]) for s in row["sources"]]
        checks = support(row["text"], sources)
        claims_read = []
        for check in checks:
            label = labels.get((row["id"], check.sentence))
            said = verdict(check)
            if label is None:
                if check.is_claim:
                    unlabelled.append((row["id"], check.sentence, said))
                continue
            counts["labelled"] += 1
            truth = "supported" if label["supported"] else "unsupported"
            flagged = said == "unsupported"
            counts["agree"] += flagged == (truth == "unsupported")
            counts["unsupported"] += truth == "unsupported"
            counts["caught"] += flagged and truth == "unsupported"
            counts["missed"] += not flagged and truth == "unsupported"
            counts["false_flags"] += flagged and truth == "supported"
            if check.is_claim:
                claims_read.append(label["supported"])
            mark = "" if flagged == (truth == "unsupported") else " **≠**"
            cell = check.sentence.replace("|", "\\|")
            why = label.get("why", "").replace("|", "\\|")
            table.append(f"| {row['id']} | {cell} | {said} | {truth}{mark} | {why} |")
        if claims_read:
            answers["judged"] += 1
            rule, reader = ungrounded(checks, sources), not any(claims_read)
            answers["both"] += rule and reader
            answers["rule_only"] += rule and not reader
            answers["reader_only"] += reader and not rule

    n = counts["labelled"]
    backend = rows[0].get("backend", "?") if rows else "?"
    lines = [
        "# Groundedness check against a reader (sample set)",
        "",
        f"`python scripts/grounding_report.py{' --reuse' if args.reuse else ''}` — the {len(rows)} questions of "
        f"`evals/sets/sample.jsonl` answered by {backend} with `refuse_unsupported` off (drafts included); each "
        "sentence's verdict from `kb.grounding` against the label in `evals/sets/sample-grounding-labels.jsonl`, "
        "given by reading the sentence and the sources it cites. A sentence with no claim (fewer than three content "
        "words, or one that says what the sources lack) counts as not flagged. Every sentence was read; a supported "
        "one carries a generic reason, an unsupported one (or a judgement call) says why.",
        "",
        f"- sentences labelled: **{n}**; the check agrees on **{counts['agree']}/{n}**",
        f"- unsupported sentences (by the labels): {counts['unsupported']}; the check flags **{counts['caught']}** "
        f"and misses {counts['missed']}",
        f"- supported sentences the check flags anyway: **{counts['false_flags']}** of "
        f"{n - counts['unsupported']}",
        f"- answers `refuse_unsupported` withholds (no claim backed by any source): "
        f"{answers['both'] + answers['rule_only']} of "
        f"{answers['judged']} judged; a reader would refuse {answers['both'] + answers['reader_only']}; "
        f"both agree on {answers['both']}, the rule alone on {answers['rule_only']}, the reader alone on "
        f"{answers['reader_only']}",
        f"- claim sentences not labelled yet: {len(unlabelled)}",
        "",
        "| id | sentence | check | reader | why |",
        "|---|---|---|---|---|",
        *table,
    ]
    if unlabelled:
        lines += ["", "## Not labelled", "", "| id | sentence | check |", "|---|---|---|"]
        lines += [f"| {qid} | {s.replace('|', chr(92) + '|')} | {said} |" for qid, s, said in unlabelled]
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
