"""Choose the answerability gate on tune splits: which retrieval signals say "the documents cannot answer this"?

    python evals/tune_refusal.py          # needs indexes/python-faq, indexes/python-docs-nofaq, indexes/postgres

Pool (tune splits only): every answerable tune question against its own index (label: answerable), every
unanswerable tune question (the git FAQ questions of python-faq / python-faq-xref: near-domain, the hard case)
against its index, and the tune questions of each corpus against the *other* corpus' index (off-domain:
unanswerable by construction). Signals per question, from the two legs kb already runs (kb.answerability):
the best dense cosine, its margin over the 10th, BM25's best score per query term, and whether the two legs
agree on a document. Reports the precision/recall curve of refusing for each signal alone and for the
logistic combination, picks the threshold that keeps false refusals ≤ 5% of answerable tune questions with
the most unanswerable ones refused, and writes ``evals/reports/refusal-tuning.md``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import KnowledgeBase
from kb.answerability import FEATURES, AnswerabilityGate, Signals, fit_gate, signals_for
from kb.evaluation.questions import load_questions
from kb.settings import Settings

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "refusal-tuning.md"
CACHE = REPO / ".bench" / "refusal-signals.jsonl"
INDEXES = os.environ.get("KB_TUNE_INDEXES", "indexes")  # a folder of copies lets it run beside kb eval
SETS = {
    "python-faq": ("evals/sets/python-faq.jsonl", INDEXES + "/python-faq"),
    "python-faq-xref": ("evals/sets/python-faq-xref.jsonl", INDEXES + "/python-docs-nofaq"),
    "postgres-exact": ("evals/sets/postgres-exact.jsonl", INDEXES + "/postgres"),
}
OFF_DOMAIN = {"python-faq": INDEXES + "/postgres", "postgres-exact": INDEXES + "/python-faq"}
MAX_FALSE_REFUSALS = 0.05


def pool(split: str = "tune") -> list[tuple[str, str, str, bool]]:
    """(set, index, question, answerable) for every question of ``split``, and off-domain pairs."""
    rows = []
    for name, (path, index) in SETS.items():
        for q in load_questions(REPO / path):
            if q.split != split:
                continue
            rows.append((name, index, q.question, q.answerable))
            if q.answerable and name in OFF_DOMAIN:
                rows.append((f"{name} → other corpus", OFF_DOMAIN[name], q.question, False))
    return rows


def collect(rows: list[tuple[str, str, str, bool]]) -> list[tuple[str, bool, Signals]]:
    out, cached = [], {}
    if CACHE.is_file():
        for line in CACHE.read_text().splitlines():
            record = json.loads(line)
            cached[(record["index"], record["question"])] = Signals(**record["signals"])
    by_index: dict[str, list[tuple[str, str, bool]]] = {}
    for name, index, question, answerable in rows:
        by_index.setdefault(index, []).append((name, question, answerable))
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with CACHE.open("a") as sink:
        for index, items in by_index.items():
            with KnowledgeBase.open(REPO / index, create=False) as kb:
                for name, question, answerable in items:
                    key = (index, question)
                    if key not in cached:
                        cached[key] = signals_for(kb.hybrid_search(10), question)
                        sink.write(json.dumps({"index": index, "question": question, "signals": asdict(cached[key])}) + "\n")
                    out.append((name, answerable, cached[key]))
    return out


def curve(scores: np.ndarray, unanswerable: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, refusal recall, false-refusal rate) refusing when score < threshold."""
    points = []
    for t in np.unique(scores):
        refuse = scores < t
        points.append((float(t), float(refuse[unanswerable].mean()), float(refuse[~unanswerable].mean())))
    return points


def pick(points: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    allowed = [p for p in points if p[2] <= MAX_FALSE_REFUSALS]
    return max(allowed, key=lambda p: (p[1], -p[2])) if allowed else min(points, key=lambda p: p[2])


def main() -> None:
    data = collect(pool())
    x = np.array([[getattr(s, f) for f in FEATURES] for _, _, s in data])
    unanswerable = np.array([not a for _, a, _ in data])
    near = np.array(["→" not in n and not a for n, a, _ in data])
    lines = [
        "# Answerability gate (tune splits only)",
        "",
        f"`python evals/tune_refusal.py` — {int((~unanswerable).sum())} answerable tune questions, "
        f"{int(near.sum())} near-domain unanswerable (git FAQ in the Python sets), "
        f"{int((unanswerable & ~near).sum())} off-domain (each corpus' tune questions asked of the other corpus).",
        f"Threshold: the most unanswerable refused with false refusals ≤ {MAX_FALSE_REFUSALS:.0%} of answerable.",
        "",
        "| signal | threshold | unanswerable refused | near-domain refused | false refusals |",
        "|---|---|---|---|---|",
    ]
    for i, feature in enumerate(FEATURES):
        t, recall, false = pick(curve(x[:, i], unanswerable))
        near_recall = float((x[near, i] < t).mean()) if near.any() else float("nan")
        lines.append(f"| {feature} alone | {t:.3f} | {recall:.2f} | {near_recall:.2f} | {false:.2f} |")
    gate = fit_gate(x, ~unanswerable)
    scores = np.array([gate.probability(s) for _, _, s in data])
    t, recall, false = pick(curve(scores, unanswerable))
    gate = gate.with_threshold(t)
    near_recall = float((scores[near] < t).mean()) if near.any() else float("nan")
    lines.append(f"| **logistic, all signals** | {t:.3f} | {recall:.2f} | {near_recall:.2f} | {false:.2f} |")
    lines += [
        "",
        "Precision/recall of refusing with the logistic gate (refuse when P(answerable) < threshold):",
        "",
        "| threshold | unanswerable refused | false refusals | refusal precision |",
        "|---|---|---|---|",
    ]
    for threshold in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        refuse = scores < threshold
        precision = float(unanswerable[refuse].mean()) if refuse.any() else float("nan")
        lines.append(
            f"| {threshold:.1f} | {refuse[unanswerable].mean():.2f} | {refuse[~unanswerable].mean():.2f} | {precision:.2f} |"
        )
    lines += ["", "Chosen gate (`answerability_gate` in kb/settings.py):", "", "```json", gate.to_json(), "```"]
    lines += read_test_once(gate)
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def read_test_once(gate: AnswerabilityGate) -> list[str]:
    """The chosen gate and the default cosine floor on the test splits, built the same way (read once)."""
    data = collect(pool("test"))
    unanswerable = np.array([not a for _, a, _ in data])
    near = np.array(["→" not in n and not a for n, a, _ in data])
    floor = Settings().refusal_floor
    refusers = {
        f"cosine floor {floor:.2f} (the default)": np.array([s.top_cosine < floor for _, _, s in data]),
        "logistic gate (above)": np.array([gate.probability(s) < gate.threshold for _, _, s in data]),
    }
    lines = [
        "",
        f"## Test splits, read once: {int((~unanswerable).sum())} answerable, {int(near.sum())} near-domain "
        f"unanswerable, {int((unanswerable & ~near).sum())} off-domain",
        "",
        "| refusing by | unanswerable refused | near-domain refused | false refusals |",
        "|---|---|---|---|",
    ]
    for label, refuse in refusers.items():
        near_share = f"{refuse[near].mean():.2f}" if near.any() else "—"
        lines.append(f"| {label} | {refuse[unanswerable].mean():.2f} | {near_share} | {refuse[~unanswerable].mean():.2f} |")
    return lines


if __name__ == "__main__":
    main()
