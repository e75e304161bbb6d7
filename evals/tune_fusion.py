"""Tune fusion on the ``tune`` split of both Python sets; the default must hold across corpora.

    python evals/tune_fusion.py            # needs the indexes that kb eval builds (see evals/README.md)

Prints nDCG@10 and hit@5 of the fused ranking for each candidate on each set, and the candidate with the
best mean nDCG@10 over the two sets. Figures on the ``test`` split come from ``kb eval`` afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase
from kb.evaluation.gold import GoldResolver
from kb.evaluation.metrics import mean, ranking_metrics
from kb.evaluation.questions import load_questions
from kb.evaluation.runner import Retrieved, judge
from kb.retrieval import HybridRetriever
from kb.settings import FusionMethod

REPO = Path(__file__).resolve().parent.parent
SETS = {
    "python-faq": (
        REPO / "evals/sets/python-faq.jsonl",
        REPO / "indexes/python-faq",
        REPO / ".bench/corpora/python-faq",
    ),
    "python-faq-xref": (
        REPO / "evals/sets/python-faq-xref.jsonl",
        REPO / "indexes/python-docs-nofaq",
        REPO / ".bench/corpora/python-docs-nofaq",
    ),
}
CANDIDATES: list[tuple[str, dict]] = [
    ("dense only", {"mode": "dense"}),
    ("bm25 only", {"mode": "bm25"}),
    ("rrf 1:1", {"fusion": FusionMethod.RRF}),
    ("dbsf", {"fusion": FusionMethod.DBSF}),
    *[(f"weighted rrf {w}:1", {"fusion": FusionMethod.WEIGHTED, "dense_weight": w}) for w in (1.5, 2.0, 3.0, 4.0, 6.0)],
    *[
        (f"weighted rrf 3:1, k={k}", {"fusion": FusionMethod.WEIGHTED, "dense_weight": 3.0, "rrf_k": k})
        for k in (5, 10, 30)
    ],
    *[
        (f"weighted rrf {w}:1, k=10", {"fusion": FusionMethod.WEIGHTED, "dense_weight": w, "rrf_k": 10})
        for w in (1.5, 2.0, 4.0)
    ],
    ("weighted rrf 3:1, prefetch 100", {"fusion": FusionMethod.WEIGHTED, "dense_weight": 3.0, "prefetch_limit": 100}),
]


def main() -> None:
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    for set_name, (path, index, corpus) in SETS.items():
        questions = [q for q in load_questions(path) if q.split == "tune" and q.answerable]
        resolver = GoldResolver(corpus)
        with KnowledgeBase.open(index) as kb:
            for label, options in CANDIDATES:
                mode = options.get("mode")
                settings = kb.settings.model_copy(update={k: v for k, v in options.items() if k != "mode"})
                retriever = HybridRetriever(kb.store, kb.embedder, settings, 10, mode=mode)
                per_q = []
                for q in questions:
                    nodes = retriever.search(q.question).nodes
                    items = [
                        Retrieved(n.node.metadata["path"], *n.node.metadata["span"][:2], n.node.node_id)
                        for n in nodes
                    ]
                    per_q.append(ranking_metrics(judge(resolver, q, items), len(q.gold)))
                scores.setdefault(label, {})[set_name] = (
                    mean([m["ndcg@10"] for m in per_q]),
                    mean([m["hit@5"] for m in per_q]),
                )
        print(f"{set_name}: {len(questions)} tune questions")
    print(f"\n| candidate | {' | '.join(f'{s} nDCG@10 / hit@5' for s in SETS)} | mean nDCG@10 |")
    print("|---|" + "---|" * (len(SETS) + 1))
    for label, per_set in scores.items():
        cells = " | ".join(f"{per_set[s][0]:.3f} / {per_set[s][1]:.3f}" for s in SETS)
        print(f"| {label} | {cells} | {mean([per_set[s][0] for s in SETS]):.3f} |")
    fused = {k: v for k, v in scores.items() if "only" not in k}
    best = max(fused, key=lambda k: mean([fused[k][s][0] for s in SETS]))
    print(f"\nbest fused candidate on the tune split: {best}")


if __name__ == "__main__":
    main()
