"""Tune the ranking on the ``tune`` splits only; the default must hold across corpora.

    python evals/tune_fusion.py            # needs the indexes listed in SETS (evals/README.md builds them)

For every tune question, each leg is queried once (the top ``DEPTH`` chunks with their scores, the ACL-free
trusted caller), and every candidate fusion is computed from those same candidates with :mod:`kb.fusion`:
weighted RRF as Qdrant computes it, Qdrant's DBSF, and convex combinations of normalised scores with
exact-token weights and page context, and context-aware candidates (a page's or section's own vector — the
mean of its chunks' vectors — or a page's BM25 score, mixed into each chunk's score; a section's strength
among the candidates) — so the candidates differ only in the fusion. It prints nDCG@10 and
hit@5 per candidate and set, studies the failures (questions where the dense leg finds the gold and the fused
ranking does not, and why), picks the candidate with the best mean nDCG@10 among those that are at least as
good as the better single leg on every set (nDCG@10 and hit@5), and writes ``evals/reports/fusion-tuning.md``.
The test split is read afterwards, once, by ``kb eval`` with the chosen settings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import KnowledgeBase
from kb.evaluation.gold import GoldResolver
from kb.evaluation.metrics import mean, percentile, ranking_metrics
from kb.evaluation.questions import Question, load_questions
from kb.evaluation.runner import Retrieved, judge
from kb.fusion import (
    Normalization,
    contains_token,
    convex,
    fold,
    named_tokens,
    normalise,
    query_weights,
    rrf,
    with_exact_match,
    with_page_context,
)
from kb.records import ChunkRecord
from kb.retrieval import HybridSearch

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "evals" / "reports" / "fusion-tuning.md"
INDEXES = os.environ.get("KB_TUNE_INDEXES", "indexes")  # a folder of copies lets it run beside kb eval
SETS = {
    "python-faq": ("evals/sets/python-faq.jsonl", INDEXES + "/python-faq", ".bench/corpora/python-faq"),
    "python-faq-xref": ("evals/sets/python-faq-xref.jsonl", INDEXES + "/python-docs-nofaq", ".bench/corpora/python-docs-nofaq"),
    "sample": ("evals/sets/sample.jsonl", INDEXES + "/sample", "kb/sample_kb"),
    "postgres-exact": ("evals/sets/postgres-exact.jsonl", INDEXES + "/postgres", ".bench/postgresql-doc-15/usr/share/doc/postgresql-doc-15/html"),
    "perl-faq": ("evals/sets/perl-faq.jsonl", INDEXES + "/perl-faq", ".bench/corpora/perl-faq"),
}  # fmt: skip
DEFAULT = "convex dbsf α=0.6, exact×2, exact match +0.5"  # kb's default fusion, what context candidates build on
OLD_DEFAULT = "weighted rrf 3:1, k=10 (kb's old default)"
CONVEX_DEFAULT = "convex dbsf α=0.6"  # the default before exact match
DEPTH = 100  # candidates per leg read once per question; fusions use the first PREFETCH of them
PREFETCH = 50


# Fusion families timed through the real retriever (store queries, fusion, nodes), interleaved per query so
# drift falls on all alike; the embedding alone is the yardstick of the latency goal (≤ 1.3× of it).
LATENCY = {
    "weighted rrf 3:1, k=10 (in Qdrant)": {"fusion": "weighted", "dense_weight": 3.0, "bm25_weight": 1.0},
    "convex dbsf α=0.6": {"fusion": "convex", "exact_token_boost": 1.0, "exact_match_bonus": 0.0},
    "convex dbsf α=0.6, exact×2, exact match +0.5": {"fusion": "convex"},
    "dense only": {"retrieval_mode": "dense"},
}
LATENCY_SET = "postgres-exact"  # the largest index (11k chunks), and the questions that name tokens


@dataclass
class Candidates:
    """One question's legs: (point id, score) best first, and what each point is."""

    question: Question
    legs: dict[str, list[tuple[str, float]]]
    records: dict[str, ChunkRecord] = field(default_factory=dict)
    # Context of each candidate's page and section, for this question: cosine of the query to the mean of the
    # page's (section's) chunk vectors, and the page's BM25 score as one document.
    page_cosine: dict[str, float] = field(default_factory=dict)
    section_cosine: dict[tuple[str, str], float] = field(default_factory=dict)
    page_bm25: dict[str, float] = field(default_factory=dict)


Fusion = Callable[[Candidates], list[str]]


def section_of(record: ChunkRecord) -> tuple[str, str]:
    return record.doc_id, record.heading


class Context:
    """Each page's and section's own vector (the normalised mean of its chunks' vectors: no extra embedding)
    and a BM25 index of whole pages, read once from an index."""

    def __init__(self, kb: KnowledgeBase) -> None:
        from rank_bm25 import BM25Okapi

        pages: dict[str, list[np.ndarray]] = defaultdict(list)
        sections: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        words: dict[str, list[str]] = defaultdict(list)
        for point in kb.store.scroll_points(batch=2048):
            record = ChunkRecord.from_payload(point.payload)
            vector = np.asarray(point.dense, dtype=np.float32)
            pages[record.doc_id].append(vector)
            sections[section_of(record)].append(vector)
            words[record.doc_id] += _words(f"{record.title} {record.heading} {record.text}")
        self.page_ids = list(pages)
        self.page_vectors = _unit(np.stack([np.mean(v, axis=0) for v in pages.values()]))
        self.section_ids = list(sections)
        self.section_vectors = _unit(np.stack([np.mean(v, axis=0) for v in sections.values()]))
        self.bm25 = BM25Okapi([words[d] for d in self.page_ids])

    def fill(self, candidates: Candidates, query: np.ndarray) -> None:
        candidates.page_cosine = dict(zip(self.page_ids, (self.page_vectors @ query).tolist(), strict=True))
        candidates.section_cosine = dict(zip(self.section_ids, (self.section_vectors @ query).tolist(), strict=True))
        scores = self.bm25.get_scores(_words(candidates.question.question))
        candidates.page_bm25 = dict(zip(self.page_ids, scores.tolist(), strict=True))


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9_]+", text.lower())


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)


def collect(kb: KnowledgeBase, questions: list[Question]) -> list[Candidates]:
    context = Context(kb)
    out = []
    for question in questions:
        legs, records = {}, {}
        for mode in ("dense", "bm25"):
            hits = kb.hybrid_search(DEPTH, mode=mode).search(question.question, k=DEPTH).hits
            legs[mode] = [(h.node_id, h.score) for h in hits]
            records.update({h.node_id: h.record for h in hits})
        candidates = Candidates(question, legs, records)
        context.fill(candidates, np.asarray(kb.embedder.embed([question.question])[0], dtype=np.float32))
        out.append(candidates)
    return out


def with_prior(fused: list[tuple[str, float]], prior: Callable[[str], float], weight: float) -> list[tuple[str, float]]:
    """Each candidate's score + ``weight`` × its context score, DBSF-scaled over the candidates, best first."""
    if weight == 0.0 or not fused:
        return list(fused)
    scaled = normalise(np.asarray([prior(p) for p, _ in fused], dtype=np.float64), Normalization.DBSF)
    mixed = [(p, s + weight * float(v)) for (p, s), v in zip(fused, scaled, strict=True)]
    return sorted(mixed, key=lambda item: (-item[1], item[0]))


def top(items: list[tuple[str, float]]) -> list[str]:
    return [point for point, _ in items[:10]]


def candidates() -> dict[str, Fusion]:
    def leg(name: str) -> Fusion:
        return lambda c: top(c.legs[name])

    def rrf_fusion(dense: float, k: int) -> Fusion:
        return lambda c: top(rrf({n: c.legs[n][:PREFETCH] for n in c.legs}, {"dense": dense, "bm25": 1.0}, k))

    def convex_fusion(
        alpha: float,
        norm: Normalization,
        boost: float = 1.0,
        context: float = 0.0,
        depth: int = PREFETCH,
        match: float = 0.0,
        page_vector: float = 0.0,
        section_vector: float = 0.0,
        page_bm25: float = 0.0,
        section_context: float = 0.0,
        match_lexical_only: bool = False,
    ) -> Fusion:
        def fuse(c: Candidates) -> list[str]:
            weights = query_weights(c.question.question, alpha, 1 - alpha, boost)
            fused = convex({n: c.legs[n][:depth] for n in c.legs}, weights, norm)
            fused = with_page_context(fused, lambda p: c.records[p].doc_id, context)
            fused = with_page_context(fused, lambda p: "\0".join(section_of(c.records[p])), section_context)
            fused = with_prior(fused, lambda p: c.page_cosine[c.records[p].doc_id], page_vector)
            fused = with_prior(fused, lambda p: c.section_cosine[section_of(c.records[p])], section_vector)
            fused = with_prior(fused, lambda p: c.page_bm25[c.records[p].doc_id], page_bm25)
            lexical = {p for p, _ in c.legs["bm25"][:depth]}

            def text_of(p: str) -> str:
                return c.records[p].text if not match_lexical_only or p in lexical else ""

            return top(with_exact_match(fused, text_of, named_tokens(c.question.question), match))

        return fuse

    def gated(alpha: float, ratio: float) -> Fusion:
        """Convex min-max, but BM25 alone decides the top when its best score stands far above its next ones."""

        def fuse(c: Candidates) -> list[str]:
            bm25 = c.legs["bm25"]
            if len(bm25) > 2 and bm25[1][1] > 0 and bm25[0][1] / bm25[1][1] >= ratio:
                head = bm25[0][0]
                rest = [p for p in convex_fusion(alpha, Normalization.MINMAX)(c) if p != head]
                return [head, *rest][:10]
            return convex_fusion(alpha, Normalization.MINMAX)(c)

        return fuse

    out: dict[str, Fusion] = {"dense only": leg("dense"), "bm25 only": leg("bm25")}
    for ratio in (1.5, 2.0):
        out[f"convex minmax α=0.7, BM25 confidence gate ×{ratio:g}"] = gated(0.7, ratio)
    out["rrf 1:1, k=60 (Qdrant's default)"] = rrf_fusion(1.0, 60)
    out["weighted rrf 3:1, k=10 (kb's old default)"] = rrf_fusion(3.0, 10)
    out["dbsf (Qdrant)"] = convex_fusion(0.5, Normalization.DBSF)
    for norm in Normalization:
        for alpha in (0.5, 0.6, 0.7, 0.8, 0.9):
            out[f"convex {norm.value} α={alpha}"] = convex_fusion(alpha, norm)
    for norm in (Normalization.DBSF,):
        for alpha in (0.6, 0.7):
            for boost in (1.5, 2.0, 4.0):
                out[f"convex {norm.value} α={alpha}, exact×{boost:g}"] = convex_fusion(alpha, norm, boost)
    for norm in (Normalization.MINMAX, Normalization.ZSCORE):
        for alpha in (0.7, 0.8):
            for boost in (2.0, 4.0):
                out[f"convex {norm.value} α={alpha}, exact×{boost:g}"] = convex_fusion(alpha, norm, boost)
                for context in (0.1, 0.2, 0.3):
                    out[f"convex {norm.value} α={alpha}, exact×{boost:g}, context {context}"] = convex_fusion(
                        alpha, norm, boost, context
                    )
            out[f"convex {norm.value} α={alpha}, prefetch 100"] = convex_fusion(alpha, norm, depth=DEPTH)
    for alpha in (0.5, 0.6, 0.7, 0.8):
        for match in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0):
            out[f"convex dbsf α={alpha}, exact match +{match}"] = convex_fusion(alpha, Normalization.DBSF, match=match)
        out[f"convex dbsf α={alpha}, exact×2, exact match +0.5"] = convex_fusion(
            alpha, Normalization.DBSF, 2.0, match=0.5
        )
        out[f"convex minmax α={alpha}, exact match +0.5"] = convex_fusion(alpha, Normalization.MINMAX, match=0.5)
    default = {"alpha": 0.6, "norm": Normalization.DBSF, "boost": 2.0, "match": 0.5}
    out[f"{DEFAULT}, exact match read on BM25's candidates only"] = convex_fusion(**default, match_lexical_only=True)
    for depth in (20, 30, 40):
        out[f"{DEFAULT}, prefetch {depth}"] = convex_fusion(**default, depth=depth)
    for weight in (0.1, 0.2, 0.3, 0.5):
        out[f"{DEFAULT}, page vector {weight}"] = convex_fusion(**default, page_vector=weight)
        out[f"{DEFAULT}, section vector {weight}"] = convex_fusion(**default, section_vector=weight)
        out[f"{DEFAULT}, page bm25 {weight}"] = convex_fusion(**default, page_bm25=weight)
        out[f"{DEFAULT}, section context {weight}"] = convex_fusion(**default, section_context=weight)
    for page, section in ((0.1, 0.1), (0.2, 0.1), (0.2, 0.2), (0.3, 0.2)):
        out[f"{DEFAULT}, page vector {page}, section vector {section}"] = convex_fusion(
            **default, page_vector=page, section_vector=section
        )
    return out


def score(
    resolver: GoldResolver, pool: list[Candidates], fusion: Fusion
) -> tuple[dict[str, float], list[list[list[int]]]]:
    judged = []
    for c in pool:
        ranked = fusion(c)
        items = [Retrieved(c.records[p].path, c.records[p].span.start, c.records[p].span.end, p) for p in ranked]
        judged.append(judge(resolver, c.question, items))
    metrics = [ranking_metrics(j, len(c.question.gold)) for j, c in zip(judged, pool, strict=True)]
    return {m: mean([x[m] for x in metrics]) for m in ("ndcg@10", "hit@5", "hit@1")}, judged


def first_gold(judged: list[list[int]]) -> int | None:
    return next((rank for rank, golds in enumerate(judged) if golds), None)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-latency", action="store_true", help="skip the latency table (minutes of queries)")
    args = parser.parse_args()
    fusions = candidates()
    table: dict[str, dict[str, dict[str, float]]] = {name: {} for name in fusions}
    study: list[str] = []
    for set_name, (path, index, corpus) in list(SETS.items()):
        questions = [q for q in load_questions(REPO / path) if q.split == "tune" and q.answerable]
        if not questions:  # a test-only set (sample): read once by `kb eval`, never tuned on
            print(f"{set_name}: no tune split, not used here", flush=True)
            del SETS[set_name]
            continue
        resolver = GoldResolver(REPO / corpus)
        tick = time.perf_counter()
        with KnowledgeBase.open(REPO / index, create=False) as kb:
            pool = collect(kb, questions)
        judged_by = {}
        for name, fusion in fusions.items():
            table[name][set_name], judged_by[name] = score(resolver, pool, fusion)
        print(f"{set_name}: {len(questions)} tune questions, {time.perf_counter() - tick:.0f} s", flush=True)
        study += failure_study(set_name, pool, judged_by)
    legs = ("dense only", "bm25 only")
    floors = {s: {m: max(table[leg][s][m] for leg in legs) for m in ("ndcg@10", "hit@5")} for s in SETS}
    fused = [n for n in fusions if n not in legs]
    holds = [n for n in fused if all(table[n][s][m] >= floors[s][m] - 1e-9 for s in SETS for m in floors[s])]
    pool_names = holds or fused
    best = max(pool_names, key=lambda n: mean([table[n][s]["ndcg@10"] for s in SETS]))
    lines = render(table, floors, holds, best, study) + ([] if args.no_latency else latency_table(*latency()))
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-6:]))
    print(f"written {REPORT}")


def latency(rounds: int = 200) -> tuple[int, dict[str, list[float]]]:
    """Milliseconds per query of each :data:`LATENCY` setting and of the query embedding, interleaved."""
    path, index, _ = SETS[LATENCY_SET]
    questions = [q.question for q in load_questions(REPO / path)][:rounds]
    timings: dict[str, list[float]] = {"query embedding": [], **{name: [] for name in LATENCY}}
    with KnowledgeBase.open(REPO / index, create=False) as kb:
        retrievers = {
            name: HybridSearch(kb.store, kb.embedder, kb.settings.model_copy(update=update), 10)
            for name, update in LATENCY.items()
        }
        for question in questions[:20]:  # warm-up: sessions, caches, page cache
            for retriever in retrievers.values():
                retriever.search(question)
        for question in questions:
            tick = time.perf_counter()
            kb.embedder.embed([question])
            timings["query embedding"].append((time.perf_counter() - tick) * 1000)
            for name, retriever in retrievers.items():
                tick = time.perf_counter()
                retriever.search(question)
                timings[name].append((time.perf_counter() - tick) * 1000)
        chunks = kb.store.count()
    return chunks, timings


def latency_table(chunks: int, timings: dict[str, list[float]]) -> list[str]:
    embed = percentile(timings["query embedding"], 0.5)
    lines = [
        "",
        f"## Latency per fusion ({LATENCY_SET} index, {chunks:,} chunks, k=10, {len(timings['query embedding'])} "
        "questions, interleaved)",
        "",
        "| what | p50 ms | p95 ms | p50 ÷ query embedding p50 |",
        "|---|---|---|---|",
    ]
    for name, values in timings.items():
        p50 = percentile(values, 0.5)
        lines.append(f"| {name} | {p50:.1f} | {percentile(values, 0.95):.1f} | {p50 / embed:.2f}× |")
    return lines


def failure_study(set_name: str, pool: list[Candidates], judged_by: dict[str, list[list[list[int]]]]) -> list[str]:
    """Why a fusion loses a leg's rank-1: the dense leg's against the old RRF default (BM25 pushes a chunk
    that repeats the question's words above it), and BM25's against the convex default before exact match
    (the dense leg never returned the one chunk that names the query's token)."""
    lines = []
    for leg, fusion in (("dense only", OLD_DEFAULT), ("bm25 only", CONVEX_DEFAULT)):
        lost, exact = [], 0
        for c, by_leg, fused in zip(pool, judged_by[leg], judged_by[fusion], strict=True):
            if first_gold(by_leg) != 0 or first_gold(fused) == 0:
                continue
            point = top(c.legs[leg.split()[0]])[0]
            named = named_tokens(c.question.question)
            exact += bool(named) and all(contains_token(fold(c.records[point].text), t) for t in named)
            where = first_gold(fused)
            lost.append(f"  - `{c.question.id}` {c.question.question[:80]!r}: gold at "
                        f"{'rank ' + str(where + 1) if where is not None else 'no rank ≤ 10'} in {fusion}")  # fmt: skip
        lines += [
            f"- **{set_name}**, {leg.split()[0]}'s rank-1 lost by {fusion}: {len(lost)} of {len(pool)} tune questions"
            + (
                f"; in {exact} of them that rank-1 chunk contains every exact token the question names."
                if lost
                else "."
            ),
            *lost[:4],
        ]
    return lines


def render(table: dict, floors: dict, holds: list[str], best: str, study: list[str]) -> list[str]:
    sets = list(SETS)
    lines = [
        "# Ranking: fusion and page context (tune splits only)",
        "",
        "Command: `python evals/tune_fusion.py`. Every candidate is computed from the same candidates per question "
        f"(each leg's top {DEPTH}, fusions over the first {PREFETCH} unless noted), so they differ only in the fusion. "
        "Figures are nDCG@10 / hit@5 on the **tune** split of each set; the test split is read once afterwards by "
        "`kb eval` (see the set reports).",
        "",
        "## Why the old default lost",
        "",
        "Reciprocal-rank fusion sees only ranks: a BM25 rank-1 bonus outweighs the gap between a dense rank-1 and "
        "rank-2 however wide it is. On natural-language questions BM25's top hit is often a chunk that repeats "
        "the question's common words; the dense leg had the answer. Convex fusion of normalised scores fixed "
        "that, and lost the other way on questions that name a parameter or code: the one chunk that names it "
        "is BM25's rank-1, the dense leg never returned it (a candidate missing from a leg gets that leg's "
        "floor), and chunks both legs find lukewarm pass it. A bonus for containing the named tokens verbatim "
        "(`kb.fusion.with_exact_match`) gives those rank-1s back.",
        "",
        *study,
        "",
        "## Every candidate on every set",
        "",
        "| candidate | "
        + " | ".join(f"{s} nDCG@10 / hit@5" for s in sets)
        + " | mean nDCG@10 | ≥ best leg everywhere |",
        "|---|" + "---|" * (len(sets) + 2),
    ]
    for name, per_set in table.items():
        cells = " | ".join(f"{per_set[s]['ndcg@10']:.3f} / {per_set[s]['hit@5']:.3f}" for s in sets)
        ok = "yes" if name in holds else ""
        lines.append(f"| {name} | {cells} | {mean([per_set[s]['ndcg@10'] for s in sets]):.3f} | {ok} |")
    lines += [
        "",
        "Best single leg per set (the floor): "
        + ", ".join(f"{s} {floors[s]['ndcg@10']:.3f} / {floors[s]['hit@5']:.3f}" for s in sets),
        "",
        f"**Chosen**: {best} — the best mean nDCG@10 among the {len(holds)} candidates at least as good as the better "
        "leg on every tune set (nDCG@10 and hit@5)."
        if holds
        else f"**No candidate holds everywhere**; best mean: {best}.",
        "",
        "```json",
        json.dumps({"chosen": best, "tune": table[best]}, indent=1),
        "```",
    ]
    return lines


if __name__ == "__main__":
    main()
