"""``kb tune``, stage 2: each question with what kb's own ranking confuses with its passage.

    questions = select_questions(read_rows(tune / "questions.jsonl"), limit=1000)
    miner = NegativeMiner(kb, MiningConfig(group=8))
    mined = miner.run(questions, tune / "negatives.jsonl")        # resumable: done questions are skipped

The questions are split by their source chunk (a hash of its text, so both questions of a chunk, and a
chunk copied elsewhere, fall on the same side, and a chunk keeps its side when more questions are written):
``heldout`` of the chunks are never trained on and decide the blend and the install gate.

Every question is retrieved the way kb ranks at query time: ``kb.retriever`` with the index's own settings
(hybrid legs, fusion, weights). A training question gets ``group - 1`` negatives drawn from fused ranks
``first_rank``..``depth`` (3–30 by default) that lie outside the positive's document section (a neighbouring
section of the same page often answers too: calling it wrong teaches the wrong thing), never the positive
chunk itself or a copy of its text. A held-out question keeps the fused top ``candidates`` (what the reranker
reads at query time, ``reranker_candidates``) with their fused scores, so the gate replays serving exactly.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import ConfigError
from kb.records import ChunkRecord
from kb.tuning.files import LineWriter, read_lines
from kb.tuning.questions import QuestionRow

NEGATIVES_FILE = "negatives.jsonl"
TRAIN, HELDOUT = "train", "heldout"


@dataclass(frozen=True)
class Question:
    """One generated question and the chunk it was written from (its positive)."""

    key: str  # stable id: hash of the chunk id and the question
    question: str
    style: str
    chunk_id: str
    doc_id: str
    header_path: tuple[str, ...]
    text: str  # the positive passage
    split: str  # TRAIN or HELDOUT


@dataclass
class Candidate:
    chunk_id: str
    doc_id: str
    text: str
    rank: int  # 0-based fused rank
    score: float  # fused score


@dataclass
class Mined:
    """A question with its fused ranking: negatives (train) or the candidates the reranker reads (held-out)."""

    key: str
    split: str
    question: str
    style: str
    chunk_id: str
    positive: str
    positive_rank: int  # 0-based fused rank of the positive chunk, -1 when retrieval missed it
    negatives: list[Candidate] = field(default_factory=list)  # train
    candidates: list[Candidate] = field(default_factory=list)  # held-out, fused order
    gold: list[int] = field(default_factory=list)  # held-out: candidates that are the positive (id or same text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mined:
        data = dict(data)
        data["negatives"] = [Candidate(**c) for c in data.get("negatives", [])]
        data["candidates"] = [Candidate(**c) for c in data.get("candidates", [])]
        return cls(**data)


@dataclass(frozen=True)
class MiningConfig:
    group: int = 8  # one positive + group-1 negatives per training question
    depth: int = 30  # fused ranks looked at for negatives
    first_rank: int = 3  # 1-based: negatives start at this fused rank (the top two are too often right too)
    candidates: int = 20  # held-out: fused candidates kept (reranker_candidates at serving)
    section_depth: int = 0  # a negative's section must differ from the positive's: 0 = another document
    seed: int = 13

    def __post_init__(self) -> None:
        if self.group < 2:
            raise ConfigError(f"group={self.group}: a training group needs the positive and at least one negative")
        if not 1 <= self.first_rank <= self.depth:
            raise ConfigError(f"first_rank={self.first_rank}: must lie in 1..depth ({self.depth})")


def split_of(text: str, heldout: float) -> str:
    """TRAIN or HELDOUT for the chunk with ``text``: its sha256 read as a number in [0, 1)."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return HELDOUT if value < heldout else TRAIN


def select_questions(
    rows: Iterable[QuestionRow], limit: int | None, heldout: float, min_heldout: int = 0, min_train: int = 0
) -> list[Question]:
    """The first ``limit`` distinct questions of ``rows`` (in the order they were written), each with its split,
    and as many more as it takes to have ``min_heldout`` held-out and ``min_train`` training questions."""
    out: list[Question] = []
    seen: set[str] = set()
    sides = {TRAIN: 0, HELDOUT: 0}
    for row in rows:
        side = split_of(row.text, heldout)
        for item in row.questions:
            text = " ".join(item["question"].split())
            if not text or text.lower() in seen:
                continue
            if enough(len(out), sides, limit, min_heldout, min_train):
                return out
            sides[side] += 1
            seen.add(text.lower())
            key = hashlib.sha256(f"{row.chunk_id}\0{text}".encode()).hexdigest()[:16]
            out.append(Question(key, text, item.get("style", ""), row.chunk_id, row.doc_id,
                                tuple(row.header_path), row.text, side))  # fmt: skip
    return out


def enough(count: int, sides: dict[str, int], limit: int | None, min_heldout: int, min_train: int) -> bool:
    """Whether ``count`` questions (``sides``: per split) complete a selection (see :func:`select_questions`)."""
    return limit is not None and count >= limit and sides[HELDOUT] >= min_heldout and sides[TRAIN] >= min_train


def same_section(doc_id: str, header_path: Iterable[str], positive: Question, depth: int) -> bool:
    """Whether a chunk lies in the positive's section: its document, and with ``depth`` > 0 its first headings."""
    if doc_id != positive.doc_id:
        return False
    return depth <= 0 or tuple(header_path)[:depth] == positive.header_path[:depth]


class NegativeMiner:
    """Mines negatives for questions over ``kb`` (an open :class:`~kb.KnowledgeBase`) with kb's own retriever."""

    def __init__(self, kb: Any, config: MiningConfig | None = None) -> None:
        self.kb = kb
        self.config = config or MiningConfig()
        self._filler: list[tuple[str, ChunkRecord]] | None = None

    def mine(self, question: Question) -> Mined:
        c = self.config
        depth = c.candidates if question.split == HELDOUT else c.depth
        hits = self.kb.hybrid_search(depth).search(question.question, k=depth).hits
        ranked = []
        for rank, hit in enumerate(hits):
            record = hit.record
            ranked.append((Candidate(hit.node_id, record.doc_id, record.text, rank, hit.score), record.header_path))
        is_positive = [cand.chunk_id == question.chunk_id or cand.text == question.text for cand, _ in ranked]
        positive_rank = next((i for i, hit in enumerate(is_positive) if hit), -1)
        mined = Mined(question.key, question.split, question.question, question.style, question.chunk_id,
                      question.text, positive_rank)  # fmt: skip
        if question.split == HELDOUT:
            mined.candidates = [cand for cand, _ in ranked]
            mined.gold = [i for i, hit in enumerate(is_positive) if hit]
            return mined
        pool = [
            cand
            for (cand, path), hit in zip(ranked, is_positive, strict=True)
            if cand.rank >= c.first_rank - 1
            and not hit
            and not same_section(cand.doc_id, path, question, c.section_depth)
        ]
        # Seeded by the question, so a resumed run draws what an uninterrupted one would have.
        rng = random.Random(f"{c.seed}:{question.key}")
        want = c.group - 1
        chosen = sorted(rng.sample(pool, min(want, len(pool))), key=lambda cand: cand.rank)
        if len(chosen) < want:  # a small index: fill with random chunks of other documents
            chosen += self._fill(question, want - len(chosen), rng, {x.chunk_id for x in chosen})
        mined.negatives = chosen
        return mined

    def _fill(self, question: Question, n: int, rng: random.Random, taken: set[str]) -> list[Candidate]:
        if self._filler is None:
            records = ((p.id, ChunkRecord.from_payload(p.payload)) for p in self.kb.store.scroll(batch=1024))
            self._filler = sorted(records, key=lambda item: item[0])
        others = [
            (point_id, record)
            for point_id, record in self._filler
            if point_id not in taken and point_id != question.chunk_id and record.text != question.text
            and not same_section(record.doc_id, record.header_path, question, self.config.section_depth)
        ]  # fmt: skip
        return [Candidate(point_id, record.doc_id, record.text, -1, 0.0) for point_id, record in
                rng.sample(others, min(n, len(others)))]  # fmt: skip

    def run(
        self,
        questions: list[Question],
        path: Path,
        deadline: float | None = None,
        on_question: Callable[[int, int], None] | None = None,
    ) -> list[Mined]:
        """Mine every question not yet in ``path`` (appending one line each), until done or ``deadline``
        (``time.monotonic()``); returns what ``path`` holds for ``questions``, in their order."""
        done = {row["key"] for row in read_lines(path)}
        todo = [q for q in questions if q.key not in done]
        with LineWriter(path) as out:
            for number, question in enumerate(todo, start=1):
                if deadline is not None and time.monotonic() > deadline:
                    break
                out.write(asdict(self.mine(question)))
                if on_question is not None:
                    on_question(len(questions) - len(todo) + number, len(questions))
        return read_mined(path, questions)


def read_mined(path: Path, questions: list[Question]) -> list[Mined]:
    """The mined rows of ``questions`` found in ``path``, in the order of ``questions``."""
    by_key = {row["key"]: row for row in read_lines(path)}
    return [Mined.from_dict(by_key[q.key]) for q in questions if q.key in by_key]
