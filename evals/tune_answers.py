"""Choose what the generator reads on a tune split: how many sources, grown by how much (small-to-big).

    python evals/tune_answers.py --kb indexes/python-faq                    # every config below, local Qwen
    python evals/tune_answers.py --kb indexes/python-faq --configs 4/0,4/600
    python evals/tune_answers.py --configs 4/900 --system-prompt evals/prompts/answer-first.txt

Each config is ``answer_sources/answer_context_tokens``. For every tune question of python-faq (answerable and
not) kb answers with the local generator, judged exactly as ``kb eval --answers`` judges: the answer cites a
gold section, citation precision, false refusals, unanswerable refused, answers with a sentence no cited
source supports (kb.grounding), prompt tokens (the generator's own), first-token and total time. Writes
``evals/reports/answers-tuning.md``; the test split is read afterwards, once, by ``kb eval``.
``--system-prompt FILE`` answers with other instructions than kb's (a candidate prompt, compared on the same
questions); the report names the file.

Answers are generated with ``refuse_unsupported`` off, and each config is reported twice: as generated, and
with the refusal applied (``+refuse``: an answer whose claims no source supports becomes a refusal). The rule
is a function of the same answers and checks, so one generation measures both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import KnowledgeBase, prompting
from kb.evaluation.gold import GoldResolver
from kb.evaluation.questions import load_questions
from kb.evaluation.report import summarize
from kb.evaluation.runner import KbSystem, QuestionResult, run

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "answers-tuning.md"
COLUMNS = (
    "answer_support", "citation_precision", "false_refusals", "refusal_recall", "unsupported_answers",
    "prompt_tokens_p50", "first_token_ms_p50", "answer_ms_p50",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=Path, default=REPO / "indexes" / "python-faq")
    parser.add_argument("--set", type=Path, default=REPO / "evals" / "sets" / "python-faq.jsonl")
    parser.add_argument("--corpus", type=Path, default=REPO / ".bench" / "corpora" / "python-faq")
    parser.add_argument("--configs", default="3/0,4/0,4/600,5/0")
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--system-prompt", type=Path, help="instructions to use instead of kb's SYSTEM_PROMPT")
    parser.add_argument("--limit", type=int, default=0, help="only the first N tune questions (a smoke test)")
    args = parser.parse_args()
    if args.system_prompt:
        # build_messages, the leak check and the example check read the module's SYSTEM_PROMPT when called.
        prompting.SYSTEM_PROMPT = args.system_prompt.read_text(encoding="utf-8").strip()
        if args.out == REPORT:  # the committed report is the default prompt's: a candidate writes beside it
            args.out = REPORT.with_name(f"answers-tuning-{args.system_prompt.stem}.md")
    questions = [q for q in load_questions(args.set) if q.split == "tune"]
    questions = questions[: args.limit] if args.limit else questions
    resolver = GoldResolver(args.corpus)
    rows = []
    for config in args.configs.split(","):
        sources, context = (int(v) for v in config.split("/"))
        tick = time.perf_counter()
        with KnowledgeBase.open(
            args.kb,
            create=False,
            llm_backend="local",
            answer_sources=sources,
            answer_context_tokens=context,
            refuse_unsupported=False,
        ) as kb:
            results = run(KbSystem(kb), questions, resolver, answer_ids={q.id for q in questions})
        seconds = time.perf_counter() - tick
        for name, judged in ((config, results), (f"{config} +refuse", refusing_unsupported(results))):
            answers = summarize(judged)["answers"]
            rows.append((name, answers, seconds))
            print(name, json.dumps({c: round(answers[c], 3) for c in COLUMNS}), flush=True)
        tag = config.replace("/", "-") + (f".{args.system_prompt.stem}" if args.system_prompt else "")
        (args.out.with_suffix(f".{tag}.jsonl")).write_text(
            "\n".join(json.dumps({"id": r.id, "answer": r.answer}) for r in results) + "\n"
        )
    answerable = sum(q.answerable for q in questions)
    lines = [
        "# What the generator reads (tune split)",
        "",
        f"`python evals/tune_answers.py --configs {args.configs}"
        + (f" --system-prompt {args.system_prompt}" if args.system_prompt else "")
        + f"` — {len(questions)} tune questions of "
        f"`{args.set.name}` ({answerable} answerable), local Qwen2.5-Coder-1.5B Q4_K_M, 2 cores. Config = "
        "`answer_sources`/`answer_context_tokens`.",
        "",
        "| config | " + " | ".join(COLUMNS) + " | wall s |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for config, answers, seconds in rows:
        lines.append(f"| {config} | " + " | ".join(f"{answers[c]:.3f}" for c in COLUMNS) + f" | {seconds:.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def refusing_unsupported(results: list[QuestionResult]) -> list[QuestionResult]:
    """``results`` as kb's ``refuse_unsupported`` would have returned them: an answer whose claims no source
    backs (``kb.grounding.ungrounded``, recorded by the runner as ``ungrounded``) becomes a refusal."""
    out = []
    for row in results:
        answer = row.answer
        if answer and not answer["refused"] and answer["ungrounded"]:
            refused = {"refused": True, "cited": 0, "cited_on_gold": 0, "supported": False, "citations": []}
            answer = answer | refused | {"token_f1": None, "rouge_l": None, "claims": 0, "unsupported": []}
        out.append(replace(row, answer=answer))
    return out


if __name__ == "__main__":
    main()
