"""``kb eval``: ingest the set's corpus if needed, run kb and the baseline, write the report folder."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kb.errors import KbError
from kb.evaluation.gold import GoldResolver
from kb.evaluation.questions import load_questions
from kb.evaluation.report import compare, summarize, write_report
from kb.evaluation.runner import Checkpoint, KbSystem, QuestionResult, System, run
from kb.knowledge_base import KnowledgeBase


def run_evaluation(
    question_set: Path,
    kb_path: Path,
    report: Path | None,
    corpus: Path | None,
    with_baseline: bool,
    answers: int,
    baseline_answers: int,
    split: str,
    console: Console,
    err_console: Console,
    baseline_256: bool = True,
    seed: int = 13,
) -> None:
    questions = load_questions(question_set)
    if split != "all":
        questions = [q for q in questions if q.split == split]
    meta = _meta(question_set)
    named = corpus is not None
    corpus = corpus or (Path(meta["corpus"]) if "corpus" in meta else None)
    if corpus is None:
        raise KbError(
            f"{question_set} names no corpus ({question_set.with_suffix('.meta.json').name} has no 'corpus'): "
            "pass --corpus FOLDER, the documents its gold references point into"
        )
    if not corpus.is_dir():
        raise KbError(
            f"corpus folder {corpus} not found: pass --corpus, or build it ({meta.get('builder', 'see evals/')})"
        )
    rng = random.Random(seed)
    answer_order = [q.id for q in rng.sample(questions, min(answers, len(questions)))]
    answer_ids = set(answer_order) or None
    baseline_ids = set(answer_order[:baseline_answers]) or None
    context: dict[str, Any] = {
        "question set": f"{question_set} ({len(questions)} questions, split {split})",
        "corpus": f"{corpus} — packages {meta.get('packages', 'n/a')}",
        "command": f"kb eval {question_set} --kb {kb_path} --split {split}"
        + (f" --corpus {corpus}" if named else "")
        + (f" --answers {answers}" if answers else "")
        + (f" --baseline-answers {baseline_answers}" if baseline_answers else "")
        + ("" if with_baseline else " --no-baseline")
        + ("" if baseline_256 or not with_baseline else " --no-baseline-256")
        + (f" --seed {seed}" if seed != 13 else ""),
        "split": f"{split} (settings are chosen on tune; reports are read on test)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    resolver = GoldResolver(corpus)
    with KnowledgeBase.open(kb_path) as kb:
        ingest = kb.ingest(corpus)
        context["kb ingest"] = ingest.as_dict() | {"chunks_in_index": kb.store.count()}
        if ingest.chunks_written:
            context["kb ingest throughput"] = f"{ingest.chunks_written / ingest.seconds:.1f} chunks/s"
        systems: dict[str, System] = {"kb": KbSystem(kb)}
        if with_baseline:
            from kb.evaluation.baseline import LlamaIndexBaseline

            generator = kb.llm if baseline_answers else None
            for chunk_size in (None, 256) if baseline_256 else (None,):
                size = chunk_size or "default"
                err_console.print(f"building the LlamaIndex baseline (chunk_size={size}; embeds its own chunks)…")
                baseline = LlamaIndexBaseline(corpus, kb.embed_model, generator, chunk_size=chunk_size)
                systems[baseline.name] = baseline

        def generates(name: str) -> bool:  # the default recipe answers; the 256 variant is for ranking
            return kb.llm is not None and name == "llamaindex"

        results: dict[str, list[QuestionResult]] = {}
        for name, system in systems.items():
            context[f"{name} setup"] = setup = system.describe()
            checkpoint = None
            if report is not None:  # answers take hours on a CPU: a run cut short resumes from here
                same_run = {k: v for k, v in setup.items() if k != "ingest_s"}  # timings differ run to run
                key = context["command"] + json.dumps(same_run, sort_keys=True, default=str) + _code_version()
                checkpoint = Checkpoint(report / ".partial" / f"{name}.jsonl", key)
            with _progress(err_console, name) as (progress, task):
                results[name] = run(
                    system,
                    questions,
                    resolver,
                    # The baseline has no extractive mode: without a generator it answers nothing.
                    answer_ids=answer_ids if name == "kb" else (baseline_ids if generates(name) else None),
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                    checkpoint=checkpoint,
                )
    _print_table(console, {name: summarize(rows) for name, rows in results.items()})
    if report is not None:
        write_report(report, f"Evaluation: {question_set.stem}", results, context, seed=seed)
        shutil.rmtree(report / ".partial", ignore_errors=True)
        console.print(f"report written to {report}/report.md")


def _code_version() -> str:
    """The commit kb runs from (with ``+dirty`` for uncommitted changes), else its version: rows answered by
    other code are not resumed into a report."""
    from kb import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "kb"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def compare_reports(a: Path, b: Path) -> str:
    for folder in (a, b):
        if not (folder / "results.jsonl").is_file():
            raise KbError(f"{folder}: no results.jsonl; pass two report folders written by kb eval --report")
    return compare(a, b)


def _meta(question_set: Path) -> dict[str, Any]:
    path = question_set.with_suffix(".meta.json")
    return json.loads(path.read_text()) if path.is_file() else {}


class _progress:
    def __init__(self, console: Console, name: str) -> None:
        self.bar = Progress(
            TextColumn(f"[bold]{name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> tuple[Progress, Any]:
        self.bar.__enter__()
        return self.bar, self.bar.add_task("", total=None)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)


def _print_table(console: Console, summaries: dict[str, dict[str, Any]]) -> None:
    names = list(summaries)
    table = Table("stage", *[f"{n} {m}" for n in names for m in ("hit@5", "mrr@10", "ndcg@10", "p50 ms")])
    for stage in summaries[names[0]]["stages"]:
        cells = []
        for n in names:
            s = summaries[n]["stages"].get(stage)
            lat = summaries[n]["latency_ms"].get(stage)
            cells += (
                [f"{s['hit@5']:.3f}", f"{s['mrr@10']:.3f}", f"{s['ndcg@10']:.3f}", f"{lat['p50']:.1f}"]
                if s
                else ["—"] * 4
            )
        table.add_row(stage, *cells)
    console.print(table)
    for n in names:
        if "answers" in summaries[n]:
            console.print(f"{n} answers: " + ", ".join(f"{k} {v:.3f}" for k, v in summaries[n]["answers"].items()))
