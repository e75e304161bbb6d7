"""Evaluation reports: summary tables (kb next to the baseline, with ratios), ``results.jsonl``, plots, and
the question-by-question comparison of two report folders."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kb.evaluation.metrics import (
    DOCUMENT_CUTOFFS,
    document_metrics,
    mean,
    paired_bootstrap,
    percentile,
    ranking_metrics,
)
from kb.evaluation.runner import QuestionResult

HEADLINE = ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10", "recall@5", "recall@10")
COMPARED = ("ndcg@10", "hit@5", "hit@1", "mrr@10")
DOCUMENT_HEADLINE = tuple(f"doc hit@{k}" for k in DOCUMENT_CUTOFFS)
STAGE_PAIRS = (("fused", "dense"), ("fused", "bm25"), ("dense", "bm25"), ("reranked", "fused"))


# Before an answer's first token: what kb does before the generator starts reading its prompt.
PREPARE = ("embed", "retrieve", "rerank", "gate", "context")


def summarize(rows: list[QuestionResult], answer_sources: int = 3) -> dict[str, Any]:
    """Mean ranking metrics per stage (answerable questions), latency per stage, answer metrics and where the
    answers were won or lost (``answer_sources``: how many fused hits the generator reads, for rows that did not
    record what it read)."""
    answerable = [r for r in rows if r.answerable]
    stages = list(rows[0].stages) if rows else []
    out: dict[str, Any] = {"questions": len(rows), "answerable": len(answerable), "stages": {}, "latency_ms": {}}
    for stage in stages:
        per_q = [ranking_metrics(r.stages[stage]["gold_hits"], r.n_gold) for r in answerable]
        out["stages"][stage] = {m: mean([q[m] for q in per_q]) for m in HEADLINE}
        if answerable and all("doc_hits" in r.stages[stage] for r in answerable):  # rows since 2026-12-07
            docs = [document_metrics(r.stages[stage]["doc_hits"]) for r in answerable]
            out["stages"][stage].update({m: mean([d[m] for d in docs]) for m in DOCUMENT_HEADLINE})
        ms = [r.stages[stage]["ms"] for r in rows]
        out["latency_ms"][stage] = {"p50": percentile(ms, 0.5), "p95": percentile(ms, 0.95)}
    answered = [r for r in rows if r.answer is not None]
    if answered:
        out["answers"] = answer_metrics(answered)
        out["answer_stages"] = answer_stages(answered, answer_sources)
    return out


GATE_REFUSAL = "no_relevant_sources"  # kb's relevance gate: refused before the generator ran


def _read_recorded(row: QuestionResult) -> bool:
    return row.answer is not None and "read" in row.answer


def gold_retrieved(row: QuestionResult, depth: int) -> bool:
    """Whether a gold section was among the sources retrieved for the answer: judged on those sources when the
    row recorded them (runs since 2026-12-06), else on the top ``depth`` of the stage the answer is made from
    (reranked when there is one, else fused) — and an answer that cites the gold had it, whatever the ranking."""
    assert row.answer is not None
    if _read_recorded(row):
        return any(hit["gold"] for hit in row.answer["read"])
    stage = row.stages.get("reranked") or row.stages.get("fused", {})
    return bool(row.answer["supported"]) or any(stage.get("gold_hits", [])[:depth])


def _refused_at_gate(answer: dict[str, Any]) -> bool:
    if "refusal_reason" in answer:
        return answer["refusal_reason"] == GATE_REFUSAL
    # Rows from before the reason was recorded: kb times its gate, and a gated answer has no first token.
    return bool(answer["refused"]) and "gate" in answer["timings"] and "first_token" not in answer["timings"]


def answer_outcome(row: QuestionResult, depth: int) -> str:
    """One answerable question's outcome, as a key of :data:`ANSWER_OUTCOMES`."""
    assert row.answer is not None
    answer, found = row.answer, gold_retrieved(row, depth)
    if answer["refused"]:
        refusal = "gated" if _refused_at_gate(answer) else "refused"
        return f"gold_{refusal}" if found else f"no_gold_{refusal}"
    if found:
        return "gold_cited" if answer["supported"] else "gold_not_cited"
    return "no_gold_answered"


ANSWER_OUTCOMES = {
    "gold_cited": "the gold was among the sources, and the answer cites it",
    "gold_not_cited": "… the answer does not cite it",
    "gold_gated": "… the relevance gate refused before generating",
    "gold_refused": "… the generated answer was refused",
    "no_gold_answered": "the gold was not among the sources: answered anyway",
    "no_gold_gated": "… refused by the relevance gate",
    "no_gold_refused": "… the generated answer was refused",
}


def answer_stages(rows: list[QuestionResult], depth: int) -> dict[str, Any]:
    """Where each goal is held back: did the gold reach the answer's sources, what became of it, and the time
    each stage of an answer took (p50 ms; the stages a system times)."""
    answerable = [r for r in rows if r.answerable and r.answer]
    outcomes = [answer_outcome(r, depth) for r in answerable]
    recorded = sum(_read_recorded(r) for r in answerable)
    judged = (
        "the sources retrieved for each answer"
        if recorded == len(answerable)
        else f"the top {depth} it answers from" + (f" ({recorded} rows: the sources retrieved)" if recorded else "")
    )
    out: dict[str, Any] = {
        "answerable": len(answerable),
        "gold_retrieved": sum(o.startswith("gold_") for o in outcomes),
        "outcomes": {key: outcomes.count(key) for key in ANSWER_OUTCOMES},
        "judged_on": judged,
    }
    timed = [r.answer["timings"] for r in rows if r.answer and "first_token" in r.answer["timings"]]
    if timed:
        prepare = [sum(t.get(stage, 0.0) for stage in PREPARE) for t in timed]
        out["time_ms_p50"] = {
            "before the generator": percentile(prepare, 0.5),
            "reading the prompt": percentile([t["first_token"] - p for t, p in zip(timed, prepare, strict=True)], 0.5),
            "writing the answer": percentile([t["total"] - t["first_token"] for t in timed], 0.5),
        }
    return out


def answer_metrics(rows: list[QuestionResult]) -> dict[str, float]:
    ans = [r for r in rows if r.answerable]
    unans = [r for r in rows if not r.answerable]
    refused = [r for r in rows if r.answer and r.answer["refused"]]
    cited = sum(r.answer["cited"] for r in ans if r.answer)
    f1 = [r.answer["token_f1"] for r in ans if r.answer and r.answer["token_f1"] is not None]
    rouge = [r.answer["rouge_l"] for r in ans if r.answer and r.answer["rouge_l"] is not None]
    totals = [r.answer["timings"].get("total", 0.0) for r in rows if r.answer]
    firsts = [r.answer["timings"]["first_token"] for r in rows if r.answer and "first_token" in r.answer["timings"]]
    given = [r for r in rows if r.answer and not r.answer["refused"]]
    prompts = [r.answer["prompt_tokens"] for r in given if r.answer.get("prompt_tokens")]
    return {
        "sample": len(rows),
        "citation_precision": sum(r.answer["cited_on_gold"] for r in ans if r.answer) / cited
        if cited
        else float("nan"),
        "answer_support": mean([float(bool(r.answer and r.answer["supported"])) for r in ans]),
        "false_refusals": mean([float(bool(r.answer and r.answer["refused"])) for r in ans]),
        "refusal_precision": sum(not r.answerable for r in refused) / len(refused) if refused else float("nan"),
        "refusal_recall": mean([float(bool(r.answer and r.answer["refused"])) for r in unans]),
        "token_f1": mean(f1),
        "rouge_l": mean(rouge),
        # answers with a sentence no cited source supports (kb.grounding), among those not refused
        "unsupported_answers": mean([float(bool(r.answer.get("unsupported"))) for r in given]),
        "prompt_tokens_p50": percentile(prompts, 0.5) if prompts else float("nan"),
        "first_token_ms_p50": percentile(firsts, 0.5) if firsts else float("nan"),
        "answer_ms_p50": percentile(totals, 0.5),
        "answer_ms_p95": percentile(totals, 0.95),
    }


def differences(systems: dict[str, list[QuestionResult]], seed: int = 13) -> list[dict[str, Any]]:
    """Paired bootstrap intervals of every kb-vs-baseline difference (same stage) and kb stage-vs-stage one."""
    per_q: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name, rows in systems.items():
        answerable = sorted((r for r in rows if r.answerable), key=lambda r: r.id)
        for stage in rows[0].stages if rows else []:
            values = [ranking_metrics(r.stages[stage]["gold_hits"], r.n_gold) for r in answerable]
            per_q[(name, stage)] = {m: [v[m] for v in values] for m in COMPARED}
    names = list(systems)
    pairs: list[tuple[tuple[str, str], tuple[str, str]]] = []
    for other in names[1:]:
        pairs += [((names[0], s), (other, s)) for s in ("bm25", "dense", "fused") if (other, s) in per_q]
    kb = names[0]
    pairs += [((kb, a), (kb, b)) for a, b in STAGE_PAIRS if (kb, a) in per_q and (kb, b) in per_q]
    out = []
    for left, right in pairs:
        for metric in COMPARED:
            diff, lo, hi = paired_bootstrap(per_q[left][metric], per_q[right][metric], seed=seed)
            out.append({"a": "/".join(left), "b": "/".join(right), "metric": metric, "diff": diff, "lo": lo, "hi": hi})
    return out


def write_report(
    folder: Path,
    title: str,
    systems: dict[str, list[QuestionResult]],
    context: dict[str, Any],
    seed: int = 13,
) -> str:
    """Write ``report.md``, ``results.jsonl``, ``summary.json`` and plots into ``folder``; return the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "results.jsonl").open("w", encoding="utf-8") as handle:
        for system, rows in systems.items():
            for row in rows:
                handle.write(json.dumps({"system": system, **asdict(row)}, ensure_ascii=False) + "\n")
    summaries = {name: summarize(rows, answer_sources(context, name)) for name, rows in systems.items()}
    diffs = differences(systems, seed)
    payload = {"context": context, "summary": summaries, "differences": diffs}
    (folder / "summary.json").write_text(json.dumps(payload, indent=1, default=str))
    _plots(folder, systems)
    text = render(title, summaries, context, diffs)
    (folder / "report.md").write_text(text)
    return text


def answer_sources(context: dict[str, Any], system: str) -> int:
    """How many sources ``system`` hands its generator, from its setup in the report's context (kb's setting;
    the stock recipe's ``answer_sources``; 3 in reports written before it said so)."""
    setup = context.get(f"{system} setup")
    if not isinstance(setup, dict):
        return 3
    answers = setup.get("answers")
    return int(answers.get("sources", 3) if isinstance(answers, dict) else setup.get("answer_sources", 3))


def rerender(folder: Path) -> str:
    """Write ``folder``'s report again from its ``results.jsonl`` and ``summary.json`` (after the report's
    format changed): the same rows, judged as they were, nothing re-run. Lines a person added to the head of
    the old ``report.md`` (a note on the run), or edited there, are kept as written."""
    from kb.evaluation.runner import QuestionResult

    context = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["context"]
    systems: dict[str, list[QuestionResult]] = {}
    for row in _result_rows(folder):
        systems.setdefault(row.pop("system"), []).append(QuestionResult(**row))
    old_path = folder / "report.md"
    old = old_path.read_text(encoding="utf-8").splitlines() if old_path.is_file() else []
    title = old[0].removeprefix("# ") if old and old[0].startswith("# ") else f"Evaluation: {folder.name}"
    seed = re.search(r"--seed (\d+)", str(context.get("command", "")))
    text = write_report(folder, title, systems, context, seed=int(seed.group(1)) if seed else 13)
    lines = text.splitlines()
    start, end = _head(lines)
    head, generated = lines[start:end], [True] * (end - start)  # generated: a line of the fresh render
    old_start, old_end = _head(old)
    anchor = -1  # where the last old line kept stands in the new head
    for line in old[old_start:old_end]:
        key = _HEAD_KEY.match(line)
        same_key = [i for i, new in enumerate(head) if key and generated[i] and new.startswith(key.group(0))]
        if line in head:
            anchor = head.index(line)
        elif same_key:  # a generated line edited by hand: the edit stands
            anchor = same_key[0]
            head[anchor], generated[anchor] = line, False
        else:  # a line added by hand: after the line it followed
            anchor += 1
            head.insert(anchor, line)
            generated.insert(anchor, False)
    text = "\n".join(lines[:start] + head + lines[end:]) + "\n"
    old_path.write_text(text, encoding="utf-8")
    return text


_HEAD_KEY = re.compile(r"- \*\*[^*]+\*\*:")  # a generated head line: "- **command**: …"


def _head(lines: list[str]) -> tuple[int, int]:
    """Where a report's head (the lines between the title and the first blank line after them) starts and ends."""
    start = 1
    while start < len(lines) and not lines[start].strip():
        start += 1
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return start, end


def render(
    title: str, summaries: dict[str, dict[str, Any]], context: dict[str, Any], diffs: list[dict[str, Any]] | None = None
) -> str:
    names = list(summaries)
    kb_name, base = names[0], (names[1] if len(names) > 1 else None)
    lines = [f"# {title}", ""]
    for key, value in context.items():
        lines.append(f"- **{key}**: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    judged_documents = any(DOCUMENT_HEADLINE[0] in stage for s in summaries.values() for stage in s["stages"].values())
    lines += [
        "",
        f"Ranking metrics over the {summaries[kb_name]['answerable']} answerable questions "
        f"({summaries[kb_name]['questions']} in all); a chunk is relevant to a gold it covers (at least half of the "
        "chunk in the gold, or half of the gold in the chunk), and credits every gold it covers."
        + (
            " `doc hit@k`: one of the top k comes from a gold's document, whatever its section (how whole-page "
            "nodes fare)."
            if judged_documents
            else ""
        ),
        "",
    ]
    header = "| stage | metric | " + " | ".join(names) + (" | kb ÷ baseline |" if base else " |")
    lines += [header, "|" + "---|" * (len(names) + (3 if base else 2))]
    for stage in summaries[kb_name]["stages"]:
        for metric in HEADLINE + DOCUMENT_HEADLINE:
            values = [summaries[n]["stages"].get(stage, {}).get(metric) for n in names]
            if metric in DOCUMENT_HEADLINE and all(v is None for v in values):
                continue  # results from before documents were judged
            cells = " | ".join("—" if v is None else f"{v:.3f}" for v in values)
            ratio = f" | {_ratio(values[0], values[1])}" if base else ""
            lines.append(f"| {stage} | {metric} | {cells}{ratio} |")
    if diffs:
        lines += [
            "",
            "Differences, paired over the same questions, with 95% bootstrap intervals (2,000 resamples); "
            "**bold** where the interval excludes 0:",
            "",
            "| a | b | metric | a − b | 95% interval |",
            "|---|---|---|---|---|",
        ]
        for d in diffs:
            sure = d["lo"] > 0 or d["hi"] < 0
            value = f"**{d['diff']:+.3f}**" if sure else f"{d['diff']:+.3f}"
            lines.append(f"| {d['a']} | {d['b']} | {d['metric']} | {value} | [{d['lo']:+.3f}, {d['hi']:+.3f}] |")
    lines += _table_head("Latency per stage, ms (p50 / p95):", "stage", names)
    for stage in summaries[kb_name]["latency_ms"]:
        cells = " | ".join(_latency(summaries[n]["latency_ms"].get(stage)) for n in names)
        lines.append(f"| {stage} | {cells} |")
    answer_systems = [n for n in names if "answers" in summaries[n]]
    if answer_systems:
        caption = "Answers (a sample; citation precision = cited chunks inside a gold section / all cited):"
        lines += _table_head(caption, "metric", answer_systems)
        for metric in summaries[answer_systems[0]]["answers"]:
            cells = " | ".join(f"{summaries[n]['answers'].get(metric, float('nan')):.3f}" for n in answer_systems)
            lines.append(f"| {metric} | {cells} |")
        lines += _answer_stage_lines(summaries, answer_systems)
    lines += [
        "",
        "Files: `results.jsonl` (one row per system and question), `summary.json`, `recall_at_k.png`, `latency.png`.",
    ]
    return "\n".join(lines) + "\n"


def _answer_stage_lines(summaries: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """Where the answers were won or lost, per system, and how long each stage of an answer took."""
    stages = {n: summaries[n]["answer_stages"] for n in names if "answer_stages" in summaries[n]}
    if not stages:
        return []
    judged = "; ".join(f"{n}, {s['judged_on']}" for n, s in stages.items())
    lines = _table_head(f"Where the answers are won or lost, answerable questions (the gold judged on: {judged}):",
                        "outcome", list(stages))  # fmt: skip
    for key, label in ANSWER_OUTCOMES.items():
        cells = " | ".join(f"{s['outcomes'][key]}/{s['answerable']}" for s in stages.values())
        lines.append(f"| {label} | {cells} |")
    timed = {n: s["time_ms_p50"] for n, s in stages.items() if "time_ms_p50" in s}
    if timed:
        lines += _table_head("Time per stage of an answer, ms p50:", "stage", list(timed))
        for stage in next(iter(timed.values())):
            lines.append(f"| {stage} | " + " | ".join(f"{t[stage]:.0f}" for t in timed.values()) + " |")
    return lines


def _table_head(caption: str, first: str, columns: list[str]) -> list[str]:
    return ["", caption, "", f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def compare(a: Path, b: Path, system: str = "kb", stage: str = "fused") -> str:
    """What got better and worse from report folder ``a`` to ``b``, question by question."""
    rows_a, rows_b = _load(a, system), _load(b, system)
    better, worse = [], []
    for qid, row in rows_b.items():
        if (
            qid not in rows_a
            or not row["answerable"]
            or stage not in row["stages"]
            or stage not in rows_a[qid]["stages"]
        ):
            continue
        before = ranking_metrics(rows_a[qid]["stages"][stage]["gold_hits"], row["n_gold"])
        after = ranking_metrics(row["stages"][stage]["gold_hits"], row["n_gold"])
        delta = after["mrr@10"] - before["mrr@10"]
        line = f"{qid}: mrr@10 {before['mrr@10']:.2f} → {after['mrr@10']:.2f}  {row['question'][:80]}"
        (better if delta > 0 else worse if delta < 0 else []).append((delta, line))
    out = [f"{system}/{stage}: {len(better)} better, {len(worse)} worse, {len(rows_b) - len(better) - len(worse)} same"]
    out += ["", "better:"] + [f"  {line}" for _, line in sorted(better, reverse=True)]
    out += ["", "worse:"] + [f"  {line}" for _, line in sorted(worse)]
    return "\n".join(out)


def _result_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows of a report folder's ``results.jsonl``, each with its ``system``."""
    lines = (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _load(folder: Path, system: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in _result_rows(folder) if r["system"] == system}


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def _latency(values: dict[str, float] | None) -> str:
    return "—" if not values else f"{values['p50']:.1f} / {values['p95']:.1f}"


def _plots(folder: Path, systems: dict[str, list[QuestionResult]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in systems.items():
        answerable = [r for r in rows if r.answerable]
        for stage in rows[0].stages:
            curve = [
                mean([ranking_metrics(r.stages[stage]["gold_hits"][:k], r.n_gold)["recall@10"] for r in answerable])
                for k in range(1, 11)
            ]
            ax.plot(range(1, 11), curve, marker="o", label=f"{name} {stage}", linestyle="-" if name == "kb" else "--")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (gold sections found)")
    ax.set_title("recall@k per stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "recall_at_k.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels, data = [], []
    for name, rows in systems.items():
        for stage in rows[0].stages:
            labels.append(f"{name}\n{stage}")
            data.append([r.stages[stage]["ms"] for r in rows])
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("ms per query")
    ax.set_title("retrieval latency per stage")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=110)
    plt.close(fig)
