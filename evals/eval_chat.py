"""Follow-up questions: does retrieval find the gold section for the second turn of a conversation?

    python evals/eval_chat.py                       # sample KB, rule rewrite (no generator)
    python evals/eval_chat.py --llm                 # also the local Qwen's rewrite

For each conversation of ``evals/sets/sample-chat.jsonl`` (two turns; the gold is the section that answers the
second), the rank of the first gold chunk in the top 10 for: the follow-up as typed, its standalone rewrite,
and what ``kb.chat`` retrieves for (both phrasings, rankings fused). Prints the table and writes
``evals/reports/chat-sample.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import KnowledgeBase, Settings
from kb.chat import Turn, rewrite
from kb.evaluation.gold import GoldResolver
from kb.evaluation.questions import Question, _gold
from kb.evaluation.runner import Retrieved, judge
from kb.retrieval import RetrievalResult
from kb.samples import sample_kb_path

REPO = Path(__file__).resolve().parent.parent
SET = REPO / "evals" / "sets" / "sample-chat.jsonl"
REPORT = REPO / "evals" / "reports" / "chat-sample.md"


def gold_rank(resolver: GoldResolver, question: Question, result: RetrievalResult) -> int | None:
    items = []
    for hit in result.hits[:10]:
        items.append(Retrieved(hit.record.path, hit.record.span.start, hit.record.span.end, hit.node_id))
    judged = judge(resolver, question, items)
    return next((rank for rank, golds in enumerate(judged, start=1) if golds), None)


def summary(ranks: list[int | None]) -> str:
    n = len(ranks)
    at1 = sum(r == 1 for r in ranks) / n
    at5 = sum(r is not None and r <= 5 for r in ranks) / n
    mrr = sum(1 / r for r in ranks if r) / n
    return f"{at1:.2f} | {at5:.2f} | {mrr:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", action="store_true", help="also measure the local generator's rewrite")
    args = parser.parse_args()
    conversations = [json.loads(line) for line in SET.read_text().splitlines() if line.strip()]
    resolver = GoldResolver(sample_kb_path())
    with tempfile.TemporaryDirectory() as tmp, KnowledgeBase.open(Path(tmp) / "index", Settings()) as kb:
        kb.ingest(sample_kb_path())
        retriever = kb.answer_engine().retriever
        rewriters = {"rule": None}
        if args.llm:
            rewriters["llm"] = KnowledgeBase.open(Path(tmp) / "llm", Settings(llm_backend="local")).llm
        rows, ranks = [], {}
        for conv in conversations:
            turns = [Turn("user", text) for text in conv["turns"]]
            typed = turns[-1].content
            question = Question(conv["id"], typed, True, [_gold(g, conv["id"]) for g in conv["gold"]])
            row = {"id": conv["id"], "typed": gold_rank(resolver, question, retriever.search(typed, k=10))}
            for name, llm in rewriters.items():
                standalone = rewrite(turns, llm)
                row[f"{name} rewrite"] = gold_rank(resolver, question, retriever.search(standalone, k=10))
                fused = retriever.search_phrasings([standalone, typed], k=10)
                row[f"{name}: kb.chat (fused)"] = gold_rank(resolver, question, fused)
                row[f"{name} text"] = standalone
            rows.append(row)
        columns = [c for c in rows[0] if c not in ("id",) and not c.endswith(" text")]
        for column in columns:
            ranks[column] = [row[column] for row in rows]
    lines = [
        "# Follow-up questions on the sample KB",
        "",
        f"`python evals/eval_chat.py{' --llm' if args.llm else ''}` — {len(rows)} two-turn conversations "
        f"(`{SET.relative_to(REPO)}`); the gold is the section that answers the second turn; ranks in the top 10.",
        "",
        "| retrieved for | hit@1 | hit@5 | MRR@10 |",
        "|---|---|---|---|",
        *(f"| {column} | {summary(values)} |" for column, values in ranks.items()),
        "",
        "| id | " + " | ".join(columns) + " | rewrite(s) |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for row in rows:
        texts = " / ".join(row[f"{name} text"] for name in rewriters)
        lines.append(f"| {row['id']} | " + " | ".join(str(row[c] or "–") for c in columns) + f" | {texts} |")
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
