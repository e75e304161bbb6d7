"""Synthetic training questions for an offline cross-encoder (issue 8, Part 2), InPars-style: the bundled
Qwen2.5-Coder-1.5B writes questions for sampled documentation chunks.

    python evals/reranker/make_questions.py --per-corpus 1500 --minutes 120 --threads 2

Training corpora only (never the Python docs, which are the evaluation sets): postgresql-doc-15, nodejs-doc
and the Rust books of rust-doc, from Debian. Chunks come from kb's own loader and HeadingChunker; prose chunks
of 60+ tokens are sampled with a fixed seed. Attempt 1 asked for "one specific question" and got 287
near-identical "What is the purpose of `X`?" questions; now each call asks for two questions in two of six
styles (how-to, why, troubleshooting, yes/no, search-box words, comparison), rotating, in the asker's own
words. Output is appended as it is generated to ``evals/reranker/data/questions.jsonl`` (one JSON object per
line: corpus, doc_id, header_path, text, question, style), so training is repeatable without the LLM and an
interrupted run resumes where it stopped.
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
RUST = "usr/share/doc/rust-doc/html/"
# Rust: the books only; the API reference pages (std, core, …) are thousands of near-identical signatures.
CORPORA = {
    "postgresql-doc-15": ["usr/share/doc/postgresql-doc-15/html"],
    "nodejs-doc": ["usr/share/doc/nodejs/api"],
    "rust-doc": [RUST + book for book in ("book", "reference", "rust-by-example", "nomicon", "edition-guide")],
}
# mdBook's print.html repeats every page of a book; Node's all.html repeats every module page.
EXCLUDE = [*Settings().exclude, "print.html", "toc.html", "all.html"]
STYLES = {
    "howto": "a 'How do I …?' or 'How can I …?' question about a task the passage shows how to do",
    "why": "a 'Why …?' question about a behaviour or rule the passage explains",
    "problem": "a question from a developer who hit an error or surprising result that the passage explains",
    "yesno": "a yes/no question such as 'Can I …?', 'Is there …?' or 'Does … ?' that the passage answers",
    "search": "a short question in casual words, as typed into a search box, with no identifiers copied",
    "compare": "a 'What is the difference between …?' or 'When should I use …?' question the passage answers",
}
STYLE_PAIRS = [("howto", "why"), ("problem", "yesno"), ("search", "compare")]
# The fixed instructions come first so llama.cpp reuses their KV cache from one call to the next (≈20% of
# every prompt); the passage and the two styles follow.
PROMPT = (
    "Write two different questions that a developer could ask and that the passage below answers. "
    "Use your own words instead of repeating the section title. Each question must make sense on its own: "
    "never say 'the passage', 'the documentation' or 'this section'. "
    "Reply with exactly two lines, '1. ' and '2. ' followed by the question.\n\n"
    "The passage, from the {product} documentation (section: {section}):\n<passage>\n{text}\n</passage>\n\n"
    "Question 1: {first}.\nQuestion 2: {second}."
)
PRODUCTS = {"postgresql-doc-15": "PostgreSQL", "nodejs-doc": "Node.js", "rust-doc": "Rust"}


def prose_chunks(folder: Path, chunker: HeadingChunker) -> list[dict]:
    documents, _ = load_folder(folder, Settings(exclude=EXCLUDE))
    out = []
    for document in documents:
        for chunk in chunker.chunk(document.parsed):
            symbols = sum(not (c.isalnum() or c.isspace()) for c in chunk.text)
            if chunk.tokens >= 60 and symbols / max(1, len(chunk.text)) < 0.12:
                out.append({"doc_id": document.doc_id, "header_path": chunk.header_path, "text": chunk.text})
    return out


def clean(line: str) -> str:
    line = re.sub(r"^\s*(\d[.)]|question\s*\d*\s*[:.]|q\s*[:.])\s*", "", line.strip(), flags=re.I).strip(" \"'*")
    banned = re.search(r"\b(the|this) (passage|documentation|section|text)\b", line, flags=re.I)
    return line if line.endswith("?") and 4 <= len(line.split()) <= 40 and not banned else ""


def corpus_chunks(corpus: str, chunker: HeadingChunker) -> list[dict]:
    """Prose chunks of one training corpus (downloaded from Debian once), doc ids relative to the package."""
    root, _ = fetch_debian_package(corpus, REPO / ".bench")
    chunks = []
    for sub in CORPORA[corpus]:
        prefix = sub.rsplit("/", 1)[-1] + "/" if corpus == "rust-doc" else ""
        chunks += [{**c, "doc_id": prefix + c["doc_id"]} for c in prose_chunks(root / sub, chunker)]
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-corpus", type=int, default=150)
    parser.add_argument("--minutes", type=float, default=30.0, help="Stop after this long (partial output kept).")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    args = parser.parse_args()
    llm = build_llm(Settings(llm_backend="local", llm_max_tokens=96, llm_temperature=0.0))
    llm.n_threads = args.threads
    chunker = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=200, min_tokens=48)
    done = set()
    if OUT.exists():
        done = {json.loads(line)["text"] for line in OUT.read_text().splitlines() if line.strip()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    plan = []
    for corpus in CORPORA:
        chunks = corpus_chunks(corpus, chunker)
        plan += [(corpus, c) for c in rng.sample(chunks, min(args.per_corpus, len(chunks)))]
        print(f"{corpus}: {len(chunks)} prose chunks", flush=True)
    rng.shuffle(plan)  # the corpora advance together if the time runs out
    deadline = time.time() + args.minutes * 60
    made = 0
    with OUT.open("a", encoding="utf-8") as out:
        for number, (corpus, chunk) in enumerate(plan):
            if time.time() > deadline:
                break
            if chunk["text"] in done:
                continue
            styles = STYLE_PAIRS[number % len(STYLE_PAIRS)]
            prompt = PROMPT.format(
                product=PRODUCTS[corpus],
                section=" > ".join(chunk["header_path"][-2:]) or chunk["doc_id"],
                text=chunk["text"],
                first=STYLES[styles[0]],
                second=STYLES[styles[1]],
            )
            tick = time.perf_counter()
            reply = llm.chat([ChatMessage(role="user", content=prompt)]).message.content or ""
            lines = [clean(line) for line in reply.strip().splitlines() if line.strip()][:2]
            for style, question in zip(styles, lines, strict=False):
                if question:
                    row = {"corpus": corpus, **chunk, "question": question, "style": style}
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    made += 1
                print(f"{made:4d} {time.perf_counter() - tick:5.1f}s {corpus:18} {question[:90]}", flush=True)
            out.flush()
    print(f"{made} questions written to {OUT}")


if __name__ == "__main__":
    main()
