"""Distil a cross-encoder from the synthetic questions (issue 8, Part 2), starting from the bundled MiniLM.

    python -m evals.reranker.train --out .bench/reranker/minilm-ce
    KB_RERANKER_MODEL=.bench/reranker/minilm-ce KB_RERANKER_CANDIDATES=30 \\
        kb eval evals/sets/python-faq.jsonl --kb indexes/python-faq --no-baseline --report /tmp/faq-reranked

Reads ``evals/reranker/data/questions.jsonl`` only: no LLM is needed to retrain. Every chunk a question was
written from is split by a hash of its text into train (90%) and dev (10%), so no dev passage is ever seen in
training.

Negatives are what kb's own hybrid retrieval confuses: for each question the corpus' prose chunks are ranked by
BM25 and by dense MiniLM cosine, fused as kb does (weighted RRF with kb's default ``dense_weight``,
``bm25_weight`` and ``rrf_k``), and ``--group - 1`` negatives are drawn from
fused ranks 3–30 outside the positive's own page (a neighbouring section of the same page often answers too;
labelling it negative teaches the wrong thing). Attempt 1 used BCE on (question, chunk) pairs; attempt 2 uses the
listwise loss rerankers are trained with (softmax cross-entropy over one positive and its negatives), which
gives every negative a gradient relative to the positive. ``--residual C`` trains the model inside the blend
it will be used with: the listwise loss reads z(logit) + C × z(fused score), so the model spends its few steps on
what retrieval gets wrong instead of relearning what it already gets right.

The dev split is scored at the end: MRR@10 of the fused order, the cross-encoder order and blends of the two
(``blend`` × z-scored cross-encoder logit + (1 − ``blend``) × z-scored fused RRF score) over the same fused top
30, written to ``training.json`` next to the model. The blend is chosen there, in-domain, never on the
Python evaluation sets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb.reranking import blend_scores, zscore
from kb.tuning.negatives import HELDOUT, split_of
from kb.tuning.train import Group, ListwiseTrainer, TrainConfig, base_model

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "evals" / "reranker" / "data" / "questions.jsonl"
CACHE = REPO / ".bench" / "reranker"
DEPTH = 30
BLENDS = [0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def load_rows() -> list[dict]:
    """Questions with the numbering the model sometimes echoed ('1. …') removed, duplicates dropped."""
    rows, seen = [], set()
    for line in DATA.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        row["question"] = re.sub(r"^\s*\d[.)]\s*", "", row["question"]).strip()
        if row["question"] and row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


DEV_SHARE = 26 / 256  # ≈10% of passages; the split of attempts 1 and 2 (first sha256 byte < 26)


def is_dev(text: str) -> bool:
    return split_of(text, DEV_SHARE) == HELDOUT  # kb tune's split by chunk hash, at attempt 2's share


def weighted_rrf(legs: list[tuple[np.ndarray, float]], k: int) -> np.ndarray:
    """kb's ``weighted`` fusion: Σ weight / (k + rank) over the legs' score arrays (higher = better)."""
    fused = np.zeros(len(legs[0][0]))
    for scores, weight in legs:
        order = np.argsort(-scores)
        ranks = np.empty(len(scores))
        ranks[order] = np.arange(1, len(scores) + 1)
        fused += weight / (k + ranks)
    return fused


class CorpusIndex:
    """BM25 + dense MiniLM over one corpus' prose chunks; the dense matrix is cached under .bench."""

    def __init__(self, corpus: str, embedder) -> None:
        from rank_bm25 import BM25Okapi

        from evals.reranker.make_questions import corpus_chunks
        from kb.chunking import HeadingChunker
        from kb.evaluation.metrics import tokens

        chunker = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=200, min_tokens=48)
        self.pool = corpus_chunks(corpus, chunker)
        self.tokens = tokens
        self.bm25 = BM25Okapi([tokens(c["text"]) for c in self.pool])
        digest = hashlib.sha256("\0".join(c["text"] for c in self.pool).encode()).hexdigest()[:12]
        cache = CACHE / f"pool-{corpus}-{digest}.npy"
        if cache.exists():
            self.dense = np.load(cache)
        else:
            self.dense = np.asarray(embedder.embed([c["text"] for c in self.pool]), dtype=np.float32)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, self.dense)
        self.embedder = embedder

    def fused(self, question: str) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the fused top ``DEPTH`` and their RRF scores."""
        from kb.settings import Settings

        s = Settings()
        bm25 = self.bm25.get_scores(self.tokens(question))
        dense = self.dense @ np.asarray(self.embedder.embed([question])[0], dtype=np.float32)
        fused = weighted_rrf([(dense, s.dense_weight), (bm25, s.bm25_weight)], s.rrf_k)
        top = np.argsort(-fused)[:DEPTH]
        return top, fused[top]


def mine(rows: list[dict], group: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Training groups (question, positive, negatives) and dev items (question, candidates, gold, fused)."""
    from kb.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    train, dev = [], []
    for corpus in sorted({r["corpus"] for r in rows}):
        index = CorpusIndex(corpus, embedder)
        started = time.perf_counter()
        mine_rows = [r for r in rows if r["corpus"] == corpus]
        for row in mine_rows:
            top, scores = index.fused(row["question"])
            texts = [index.pool[i]["text"] for i in top]
            if is_dev(row["text"]):
                candidates = texts if row["text"] in texts else [*texts[:-1], row["text"]]
                fused = scores if row["text"] in texts else np.append(scores[:-1], scores[-1] * 0.999)
                dev.append(
                    {
                        "question": row["question"],
                        "candidates": candidates,
                        "gold": row["text"],
                        "fused": fused.tolist(),
                    }
                )
                continue
            # z-scored fused score of every candidate (over the top DEPTH, as at query time); a positive the
            # retrieval missed gets one below the lowest
            z = dict(zip(texts, zscore(scores).tolist(), strict=True))
            floor = min(z.values()) - 1.0
            page = row["doc_id"]
            negatives = [index.pool[i]["text"] for i in top[2:] if index.pool[i]["doc_id"] != page]
            negatives = [t for t in negatives if t != row["text"]]
            if len(negatives) < group - 1:
                negatives += [c["text"] for c in rng.sample(index.pool, group)]
            chosen = rng.sample(negatives[: 3 * group], group - 1)
            train.append(
                {
                    "question": row["question"],
                    "positive": row["text"],
                    "negatives": chosen,
                    "fused_z": [z.get(t, floor) for t in [row["text"], *chosen]],
                }
            )
        print(f"{corpus}: {len(mine_rows)} questions mined in {time.perf_counter() - started:.0f} s", flush=True)
    return train, dev


def mrr(order: np.ndarray, gold: int) -> float:
    position = int(np.where(order == gold)[0][0])
    return 1.0 / (position + 1) if position < 10 else 0.0


def evaluate_dev(model, tokenizer, dev: list[dict], max_length: int) -> dict[str, float]:
    """MRR@10 on the dev split: fused order, then each blend of cross-encoder and fused scores."""
    import torch

    totals = {"fused": 0.0, **{f"blend {b}": 0.0 for b in BLENDS}}
    model.eval()
    with torch.inference_mode():
        for item in dev:
            enc = tokenizer(
                [item["question"]] * len(item["candidates"]),
                item["candidates"],
                truncation="only_second",
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**enc).logits.squeeze(-1).numpy()
            fused = np.asarray(item["fused"])
            gold = item["candidates"].index(item["gold"])
            totals["fused"] += mrr(np.argsort(-fused, kind="stable"), gold)
            for b in BLENDS:
                blended = blend_scores(logits, fused, b)
                totals[f"blend {b}"] += mrr(np.argsort(-blended, kind="stable"), gold)
    model.train()
    return {name: round(total / max(1, len(dev)), 4) for name, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=CACHE / "minilm-ce")
    parser.add_argument("--layers", type=int, default=6, help="keep the first N of MiniLM's 6 layers")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--group", type=int, default=4, help="one positive + N-1 mined negatives per question")
    parser.add_argument("--batch", type=int, default=8, help="questions per step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=160, help="word pieces per (question, chunk) pair")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N questions (pilot runs)")
    parser.add_argument("--residual", type=float, default=0.0, help="train inside the blend: z(logit) + C·z(fused)")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = load_rows()[: args.limit or None]
    train, dev = mine(rows, args.group, rng)
    print(f"{len(rows)} questions: {len(train)} train groups of {args.group}, {len(dev)} dev", flush=True)

    # The training loop is kb tune's (kb/tuning/train.py): listwise loss, head at 20× the encoder's rate,
    # warm-up then linear decay, resumable checkpoints next to the model.
    config = TrainConfig(layers=args.layers, batch=args.batch, epochs=args.epochs, lr=args.lr,
                         max_length=args.max_length, residual=args.residual, seed=args.seed)  # fmt: skip
    groups = [Group(g["question"], [g["positive"], *g["negatives"]], g["fused_z"]) for g in train]
    data_sha = hashlib.sha256(DATA.read_bytes()).hexdigest()
    trainer = ListwiseTrainer(groups, config, args.out / ".train", f"{data_sha}:{vars(args)}")
    untrained, tokenizer = base_model(args.layers)
    before = evaluate_dev(untrained, tokenizer, dev, args.max_length)
    print(f"dev before training: {before}", flush=True)

    def report(state) -> None:
        if state.step % 25 == 0:
            loss = np.mean(state.losses[-25:])
            print(f"step {state.step}/{state.steps} loss {loss:.3f} {state.seconds:.0f}s", flush=True)

    state = trainer.run(on_step=report)
    seconds = round(state.seconds)
    trainer.model.to("cpu")  # evaluated and saved on the CPU, wherever it trained
    after = evaluate_dev(trainer.model, trainer.tokenizer, dev, args.max_length)
    print(f"dev after training: {after}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer.model.eval()
    trainer.model.save_pretrained(str(args.out))
    trainer.tokenizer.save_pretrained(str(args.out))
    record = {
        "questions": len(rows),
        "train_groups": len(train),
        "dev_questions": len(dev),
        "group": args.group,
        "batch": args.batch,
        "steps": state.steps,
        "layers": args.layers,
        "epochs": args.epochs,
        "lr": args.lr,
        "max_length": args.max_length,
        "residual": args.residual,
        "seconds": seconds,
        "data": str(DATA.relative_to(REPO)),
        "data_sha256": data_sha,
        "dev_mrr10_before": before,
        "dev_mrr10_after": after,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"saved {args.out} in {seconds} s", flush=True)


if __name__ == "__main__":
    main()
