"""Distil a cross-encoder from the synthetic questions (issue 8, Part 2), starting from the bundled MiniLM.

    python evals/reranker/train.py --out .bench/reranker/minilm-ce
    KB_RERANKER_MODEL=.bench/reranker/minilm-ce KB_RERANKER_CANDIDATES=30 \\
        kb eval evals/sets/python-faq.jsonl --kb indexes/python-faq --no-baseline --report /tmp/faq-reranked

Pairs: each question with the chunk it was written from (positive), three BM25 hard negatives from the same
corpus (other sections that share its words) and one random chunk. Binary cross-entropy on the logit,
AdamW, linear warm-up. Reads ``evals/reranker/data/questions.jsonl`` only: no LLM needed to retrain.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "evals" / "reranker" / "data" / "questions.jsonl"


def main() -> None:
    import torch
    from rank_bm25 import BM25Okapi
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from evals.reranker.make_questions import CORPORA, prose_chunks
    from kb.chunking import HeadingChunker
    from kb.embedding import resolve_model_path
    from kb.evaluation.debian import fetch_debian_package
    from kb.evaluation.metrics import tokens

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "reranker" / "minilm-ce")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    chunker = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=200, min_tokens=48)
    pairs: list[tuple[str, str, float]] = []
    for corpus, sub in CORPORA.items():
        mine = [r for r in rows if r["corpus"] == corpus]
        if not mine:
            continue
        root, _ = fetch_debian_package(corpus, REPO / ".bench")
        pool = prose_chunks(root / sub, chunker)
        bm25 = BM25Okapi([tokens(c["text"]) for c in pool])
        for row in mine:
            scores = bm25.get_scores(tokens(row["question"]))
            ranked = sorted(range(len(pool)), key=lambda i: -scores[i])[:20]
            hard = [
                pool[i]["text"]
                for i in ranked
                if not (pool[i]["doc_id"] == row["doc_id"] and pool[i]["header_path"] == row["header_path"])
            ][:3]
            pairs.append((row["question"], row["text"], 1.0))
            pairs += [(row["question"], text, 0.0) for text in [*hard, rng.choice(pool)["text"]]]
    print(f"{len(rows)} questions → {len(pairs)} pairs", flush=True)
    minilm = resolve_model_path("all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig.from_pretrained(str(minilm), num_labels=1, num_hidden_layers=args.layers)
    model = BertForSequenceClassification.from_pretrained(str(minilm), config=config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * ((len(pairs) + 15) // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0))  # one positive per four negatives
    model.train()
    started, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), 16):
            batch = pairs[start : start + 16]
            enc = tokenizer(
                [p[0] for p in batch],
                [p[1] for p in batch],
                truncation="only_second",
                max_length=256,
                padding=True,
                return_tensors="pt",
            )
            loss = loss_fn(model(**enc).logits.squeeze(-1), torch.tensor([p[2] for p in batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} {time.perf_counter() - started:.0f}s")
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    (args.out / "training.json").write_text(
        json.dumps(
            {
                "questions": len(rows),
                "pairs": len(pairs),
                "layers": args.layers,
                "epochs": args.epochs,
                "lr": args.lr,
                "seconds": round(time.perf_counter() - started),
                "data": str(DATA.relative_to(REPO)),
            },
            indent=1,
        )
    )
    print(f"saved {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
