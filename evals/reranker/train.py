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


def is_dev(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] < 26  # ≈10% of passages


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
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kb.embedding import resolve_model_path

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
    torch.manual_seed(args.seed)
    rows = load_rows()[: args.limit or None]
    train, dev = mine(rows, args.group, rng)
    print(f"{len(rows)} questions: {len(train)} train groups of {args.group}, {len(dev)} dev", flush=True)

    minilm = resolve_model_path("all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig.from_pretrained(str(minilm), num_labels=1, num_hidden_layers=args.layers)
    model = BertForSequenceClassification.from_pretrained(str(minilm), config=config)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    # The head starts from nothing, the encoder from good weights: the head learns 20× faster.
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": args.lr}, {"params": head, "lr": args.lr * 20}], weight_decay=0.01
    )
    steps = max(1, int(args.epochs * len(train) / args.batch))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    before = evaluate_dev(model, tokenizer, dev, args.max_length)
    print(f"dev before training: {before}", flush=True)
    model.train()
    started = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        if step % max(1, len(train) // args.batch) == 0:
            rng.shuffle(train)
        offset = (step * args.batch) % max(1, len(train) - args.batch + 1)
        batch = train[offset : offset + args.batch]
        questions = [g["question"] for g in batch for _ in range(args.group)]
        passages = [t for g in batch for t in [g["positive"], *g["negatives"]]]
        enc = tokenizer(
            questions, passages, truncation="only_second", max_length=args.max_length, padding=True, return_tensors="pt"
        )
        logits = model(**enc).logits.view(len(batch), args.group)
        if args.residual:
            standard = (logits - logits.mean(1, keepdim=True)) / (logits.std(1, keepdim=True) + 1e-6)
            logits = 3.0 * (standard + args.residual * torch.tensor([g["fused_z"] for g in batch]))
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            print(
                f"step {step + 1}/{steps} loss {np.mean(losses[-25:]):.3f} {time.perf_counter() - started:.0f}s",
                flush=True,
            )
    seconds = round(time.perf_counter() - started)
    after = evaluate_dev(model, tokenizer, dev, args.max_length)
    print(f"dev after training: {after}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    record = {
        "questions": len(rows),
        "train_groups": len(train),
        "dev_questions": len(dev),
        "group": args.group,
        "batch": args.batch,
        "steps": steps,
        "layers": args.layers,
        "epochs": args.epochs,
        "lr": args.lr,
        "max_length": args.max_length,
        "residual": args.residual,
        "seconds": seconds,
        "data": str(DATA.relative_to(REPO)),
        "data_sha256": hashlib.sha256(DATA.read_bytes()).hexdigest(),
        "dev_mrr10_before": before,
        "dev_mrr10_after": after,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"saved {args.out} in {seconds} s", flush=True)


if __name__ == "__main__":
    main()
