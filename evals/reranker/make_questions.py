"""Synthetic training questions for an offline cross-encoder (issue 8, Part 2), InPars-style: the bundled
Qwen2.5-Coder-1.5B writes one question per sampled documentation chunk.

    python evals/reranker/make_questions.py --per-corpus 150 --minutes 30

Training corpora only (never the Python docs, which are the evaluation sets): postgresql-doc-15 and
nodejs-doc from Debian. Chunks come from kb's own loader and HeadingChunker; prose chunks of 60+ tokens are
sampled with a fixed seed. Output is appended as it is generated to ``evals/reranker/data/questions.jsonl``
(one JSON object per line: corpus, doc_id, header_path, text, question), so training is repeatable without the
LLM and an interrupted run keeps what it made.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core.llms import ChatMessage

from kb.chunking import HeadingChunker
from kb.evaluation.debian import fetch_debian_package
from kb.llm import build_llm
from kb.loading import load_folder
from kb.settings import Settings

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "evals" / "reranker" / "data" / "questions.jsonl"
CORPORA = {
    "postgresql-doc-15": "usr/share/doc/postgresql-doc-15/html",
    "nodejs-doc": "usr/share/doc/nodejs/api",
}
PROMPT = (
    "Here is a passage from technical documentation.\n\n<passage>\n{text}\n</passage>\n\n"
    "Write one specific question that a developer could ask and that this passage answers. "
    "Do not mention the passage or the documentation. Reply with the question only."
)


def prose_chunks(folder: Path, chunker: HeadingChunker) -> list[dict]:
    documents, _ = load_folder(folder, Settings())
    out = []
    for document in documents:
        for chunk in chunker.chunk(document.parsed):
            symbols = sum(not (c.isalnum() or c.isspace()) for c in chunk.text)
            if chunk.tokens >= 60 and symbols / max(1, len(chunk.text)) < 0.12:
                out.append({"doc_id": document.doc_id, "header_path": chunk.header_path, "text": chunk.text})
    return out


def clean(reply: str) -> str:
    line = reply.strip().splitlines()[0] if reply.strip() else ""
    line = re.sub(r"^(question|q)\s*[:.]\s*", "", line, flags=re.I).strip(" \"'")
    return line if line.endswith("?") and 4 <= len(line.split()) <= 40 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-corpus", type=int, default=150)
    parser.add_argument("--minutes", type=float, default=30.0, help="Stop after this long (partial output kept).")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    llm = build_llm(Settings(llm_backend="local", llm_max_tokens=48, llm_temperature=0.0))
    chunker = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=200, min_tokens=48)
    done = set()
    if OUT.exists():
        done = {json.loads(line)["text"] for line in OUT.read_text().splitlines() if line.strip()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    plan = []
    for corpus, sub in CORPORA.items():
        root, _ = fetch_debian_package(corpus, REPO / ".bench")
        chunks = prose_chunks(root / sub, chunker)
        plan += [(corpus, c) for c in rng.sample(chunks, min(args.per_corpus, len(chunks)))]
    rng.shuffle(plan)  # both corpora advance together if the time runs out
    deadline = time.time() + args.minutes * 60
    made = 0
    with OUT.open("a", encoding="utf-8") as out:
        for corpus, chunk in plan:
            if time.time() > deadline:
                break
            if chunk["text"] in done:
                continue
            tick = time.perf_counter()
            reply = llm.chat([ChatMessage(role="user", content=PROMPT.format(text=chunk["text"]))]).message.content
            question = clean(reply or "")
            if question:
                out.write(json.dumps({"corpus": corpus, **chunk, "question": question}, ensure_ascii=False) + "\n")
                out.flush()
                made += 1
            print(f"{made:4d} {time.perf_counter() - tick:5.1f}s {corpus:18} {question[:90]}", flush=True)
    print(f"{made} questions written to {OUT}")


if __name__ == "__main__":
    main()
