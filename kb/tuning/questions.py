"""``kb tune``, stage 1: questions a user would ask, written by the local LLM for sampled chunks of the index.

    writer = QuestionWriter(kb, llm)
    writer.run(target=2000, minutes=600)        # appends to INDEX/tune/questions.jsonl; resumable
    writer.progress()                           # done / target, questions kept, rate, ETA

Chunks are sampled from the index itself (prose chunks, at most a few per document, a fixed seed), so the
questions are about this knowledge base's documents. Each LLM call asks for two questions in two of six
styles (how-to, why, troubleshooting, yes/no, search-box words, comparison), in the asker's words: a user
types a question *before* reading the passage, so a question that copies a run of the passage's words, or
names the passage, is dropped. One line per chunk tried is appended as soon as it is written, so a kill
loses at most the chunk in flight, and the next run skips what is done.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.llms import LLM, ChatMessage

from kb.records import ChunkRecord

TUNE_DIR = "tune"
QUESTIONS_FILE = "questions.jsonl"
PROGRESS_FILE = "questions-progress.json"
STYLES = {
    "howto": "a 'How do I …?' or 'How can I …?' question about a task the passage shows how to do",
    "why": "a 'Why …?' question about a behaviour or rule the passage explains",
    "problem": "a question from someone who hit an error or a surprising result that the passage explains",
    "yesno": "a yes/no question such as 'Can I …?', 'Is there …?' or 'Does … ?' that the passage answers",
    "search": "a short question in casual words, as typed into a search box, with no identifiers copied",
    "compare": "a 'What is the difference between …?' or 'When should I use …?' question the passage answers",
}
STYLE_PAIRS = [("howto", "why"), ("problem", "yesno"), ("search", "compare")]
# The fixed instructions come first so llama.cpp reuses their KV cache from one call to the next.
PROMPT = (
    "Write two different questions that a user of this documentation could ask and that the passage below "
    "answers. The user has not read the passage: use your own everyday words, do not copy phrases or rare "
    "terms from it, and do not repeat the section title. Each question must make sense on its own: never say "
    "'the passage', 'the documentation' or 'this section'. "
    "Reply with exactly two lines, '1. ' and '2. ' followed by the question.\n\n"
    "The passage, from {where}:\n<passage>\n{text}\n</passage>\n\n"
    "Question 1: {first}.\nQuestion 2: {second}."
)
_WORD = re.compile(r"[a-z0-9_]+")
_BANNED = re.compile(r"\b(the|this|that) (passage|documentation|section|text|document)\b", re.IGNORECASE)
COPY_NGRAM = 5  # a question sharing this many consecutive words with its passage was copied, not asked


@dataclass
class QuestionRow:
    """One chunk tried: where it is (so a rebuilt index can find it again) and the questions kept."""

    chunk_id: str
    doc_id: str
    path: str
    source: str
    span: list[int]
    header_path: list[str]
    text: str
    questions: list[dict[str, str]] = field(default_factory=list)  # {"question", "style"}
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def tune_dir(index: Path) -> Path:
    return index / TUNE_DIR


def read_rows(path: Path) -> list[QuestionRow]:
    """The rows written so far (a line cut off by a kill is ignored)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(QuestionRow(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue
    return rows


def prose_chunks(records: Iterator[tuple[str, ChunkRecord]], min_words: int = 40) -> list[tuple[str, ChunkRecord]]:
    """Chunks worth a question: prose of some length, not tables of symbols or code listings."""
    out = []
    for point_id, record in records:
        words = record.text.split()
        symbols = sum(not (c.isalnum() or c.isspace()) for c in record.text)
        if len(words) >= min_words and symbols / max(1, len(record.text)) < 0.12:
            out.append((point_id, record))
    return out


def sample(
    chunks: list[tuple[str, ChunkRecord]], n: int, seed: int, per_document: int = 3
) -> list[tuple[str, ChunkRecord]]:
    """``n`` chunks, at most ``per_document`` from any document, in a seeded random order (stable across runs)."""
    rng = random.Random(seed)
    ordered = sorted(chunks, key=lambda c: (c[1].doc_id, c[1].chunk_index))
    rng.shuffle(ordered)
    taken: dict[str, int] = {}
    picked = []
    for item in ordered:
        if taken.get(item[1].doc_id, 0) < per_document:
            taken[item[1].doc_id] = taken.get(item[1].doc_id, 0) + 1
            picked.append(item)
        if len(picked) == n:
            break
    return picked


def clean_question(line: str, passage: str) -> tuple[str, str]:
    """(question, "") when ``line`` is a usable question, else ("", why it was dropped)."""
    text = re.sub(r"^\s*(\d[.)]|question\s*\d*\s*[:.]|q\s*[:.])\s*", "", line.strip(), flags=re.I).strip(" \"'*")
    if not text.endswith("?"):
        return "", "not a question"
    if not 4 <= len(text.split()) <= 40:
        return "", "length"
    if _BANNED.search(text):
        return "", "names the passage"
    words = _WORD.findall(text.lower())
    passage_words = _WORD.findall(passage.lower())
    grams = {tuple(passage_words[i : i + COPY_NGRAM]) for i in range(len(passage_words) - COPY_NGRAM + 1)}
    if any(tuple(words[i : i + COPY_NGRAM]) in grams for i in range(len(words) - COPY_NGRAM + 1)):
        return "", "copies the passage"
    return text, ""


class QuestionWriter:
    """Writes questions for sampled chunks of ``kb`` with ``llm``, appending to ``kb.path/tune/``."""

    def __init__(self, kb: Any, llm: LLM, seed: int = 13, folder: Path | None = None) -> None:
        self.kb, self.llm, self.seed = kb, llm, seed
        self.folder = folder or tune_dir(kb.path)
        self.path = self.folder / QUESTIONS_FILE

    def plan(self, target: int) -> list[tuple[str, ChunkRecord]]:
        """The chunks the run works through (``target`` of them; every question count is 0–2 per chunk)."""
        records = ((c.id, ChunkRecord.from_payload(c.payload)) for c in self.kb.store.scroll(batch=1024))
        return sample(prose_chunks(records), target, self.seed)

    def run(
        self,
        target: int,
        minutes: float | None = None,
        on_row: Callable[[QuestionRow, int, int], None] | None = None,
        chunks: list[tuple[str, ChunkRecord]] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> list[QuestionRow]:
        """Work until ``target`` chunks are done, ``minutes`` pass or ``stop()`` (asked after each chunk) says
        so; returns every row written so far.

        ``chunks`` is a plan made earlier (:meth:`plan`), so the index need not stay open meanwhile."""
        from kb.tuning.files import LineWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        done = {row.chunk_id for row in read_rows(self.path)}
        todo = [(i, r) for i, r in (chunks if chunks is not None else self.plan(target)) if i not in done]
        deadline = time.monotonic() + minutes * 60 if minutes else None
        started, finished = time.monotonic(), 0
        with LineWriter(self.path) as out:  # one flushed line per chunk; a line a kill cut off is skipped
            for number, (point_id, record) in enumerate(todo):
                if deadline is not None and time.monotonic() > deadline:
                    break
                if stop is not None and stop():
                    break
                row = self.ask(point_id, record, STYLE_PAIRS[(len(done) + number) % len(STYLE_PAIRS)])
                out.write(asdict(row))
                finished += 1
                self._progress(target, len(done) + finished, time.monotonic() - started, finished)
                if on_row is not None:
                    on_row(row, len(done) + finished, min(target, len(done) + len(todo)))
        return read_rows(self.path)

    def ask(self, point_id: str, record: ChunkRecord, styles: tuple[str, str]) -> QuestionRow:
        where = " > ".join(part for part in [record.title, *record.header_path[-2:]] if part) or record.path
        prompt = PROMPT.format(where=where, text=record.text, first=STYLES[styles[0]], second=STYLES[styles[1]])
        tick = time.perf_counter()
        reply = self.llm.chat([ChatMessage(role="user", content=prompt)]).message.content or ""
        row = QuestionRow(
            point_id,
            record.doc_id,
            record.path,
            record.source,
            [record.span.start, record.span.end],
            list(record.header_path),
            record.text,
        )
        lines = [line for line in reply.strip().splitlines() if line.strip()][:2]
        for style, line in zip(styles, lines, strict=False):
            question, why = clean_question(line, record.text)
            if question:
                row.questions.append({"question": question, "style": style})
            else:
                row.dropped.append(why)
        row.seconds = time.perf_counter() - tick
        return row

    def _progress(self, target: int, done: int, elapsed: float, finished: int) -> None:
        rate = finished / elapsed if elapsed > 0 else 0.0
        state = {
            "target_chunks": target,
            "chunks_done": done,
            "chunks_per_minute": round(rate * 60, 2),
            "eta_minutes": round((target - done) / rate / 60, 1) if rate > 0 else None,
            "updated_at": time.time(),
        }
        tmp = self.folder / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.folder / PROGRESS_FILE)

    def progress(self) -> dict[str, Any]:
        rows = read_rows(self.path)
        state = {}
        if (self.folder / PROGRESS_FILE).is_file():
            state = json.loads((self.folder / PROGRESS_FILE).read_text())
        return {
            **state,
            "chunks_done": len(rows),
            "questions": sum(len(r.questions) for r in rows),
            "dropped": sum(len(r.dropped) for r in rows),
        }
