"""Run a question set against kb (and the stock LlamaIndex recipe) and judge every stage.

A *system* answers two calls: ``retrieve(stage, question, k)`` for each ranking stage it has (``bm25``,
``dense``, ``fused``, ``reranked``) and ``answer(question)``. Both kb and the baseline are judged the same way:
a retrieved chunk is relevant to every gold of the same document it covers (:func:`kb.evaluation.gold.covers`).
Each result row keeps, per hit, its document, span, the golds it was credited to and its first 200 characters,
so a ranking can be re-judged later without re-running it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kb.evaluation.gold import GoldResolver
from kb.evaluation.metrics import rouge_l, token_f1
from kb.evaluation.questions import Question
from kb.grounding import Numbered, support, ungrounded
from kb.knowledge_base import KnowledgeBase
from kb.settings import RetrievalMode

KB_STAGES: dict[str, RetrievalMode] = {
    "bm25": RetrievalMode.BM25,
    "dense": RetrievalMode.DENSE,
    "fused": RetrievalMode.HYBRID,
}


@dataclass(frozen=True)
class Retrieved:
    doc_id: str  # path inside the corpus folder (what gold references name)
    start: int
    end: int
    node_id: str
    text: str = ""


@dataclass
class AnswerRecord:
    text: str
    refused: bool
    cited: list[Retrieved]
    timings: dict[str, float]
    sources: list[Numbered] = field(default_factory=list)  # what the generator read, by citation number
    prompt_tokens: int | None = None
    read: list[Retrieved] = field(default_factory=list)  # the same sources, located: did the gold reach it?
    refusal_reason: str | None = None  # kb's Answer.refusal_reason ("no_relevant_sources": the generator never ran)


class System(Protocol):
    name: str
    stages: tuple[str, ...]

    def retrieve(self, stage: str, question: str, k: int) -> list[Retrieved]: ...

    def answer(self, question: str) -> AnswerRecord: ...

    def describe(self) -> dict[str, Any]: ...


class KbSystem:
    """kb through its public API."""

    name = "kb"

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        # "reranked": the fused top reranker_candidates reordered by the cross-encoder, when one is available.
        self.stages = tuple(KB_STAGES) + (("reranked",) if kb.reranker is not None else ())

    def retrieve(self, stage: str, question: str, k: int) -> list[Retrieved]:
        # Gold references name paths inside the corpus folder: kb's source-relative path.
        if stage == "reranked":
            hits = self.kb.search(question, k=k, rerank=True)
            return [Retrieved(h.path, h.span.start, h.span.end, h.node_id, h.text) for h in hits]
        result = self.kb.hybrid_search(k, mode=KB_STAGES[stage]).search(question)
        records = [(h.node_id, h.record) for h in result.hits]
        return [Retrieved(r.path, r.span.start, r.span.end, node_id, r.text) for node_id, r in records]

    def answer(self, question: str) -> AnswerRecord:
        answer = self.kb.ask(question)
        cited = [Retrieved(c.path, c.span.start, c.span.end, c.node_id, c.quote) for c in answer.citations]
        sources = [Numbered(s.number, s.text) for s in answer.sources]
        read = [Retrieved(s.path, s.span.start, s.span.end, s.node_id, s.text) for s in answer.sources]
        return AnswerRecord(
            answer.text, answer.refused, cited, answer.timings, sources, answer.prompt_tokens, read,
            answer.refusal_reason or None,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        s = self.kb.settings
        return {
            "embedder": self.kb.info.embedder,
            "chunking": self.kb.info.chunking,
            "retrieval": {
                "fusion": s.fusion.value,
                "dense_weight": s.dense_weight,
                "bm25_weight": s.bm25_weight,
                "rrf_k": s.rrf_k,
                "prefetch_limit": s.prefetch_limit,
                "normalization": s.fusion_normalization,
                "exact_token_boost": s.exact_token_boost,
                "exact_match_bonus": s.exact_match_bonus,
                "context_weight": s.context_weight,
            },
            "answers": {
                "backend": self.kb.answer_engine().backend,
                "sources": s.answer_sources,
                "refusal_floor": s.refusal_floor,
            },
            "reranker": (
                {
                    "model": s.reranker_model,
                    "candidates": s.reranker_candidates,
                    "backend": s.reranker_backend.value,
                    "max_tokens": getattr(self.kb.reranker, "max_length", None),
                    "blend": getattr(self.kb.reranker, "blend", None),
                }
                if self.kb.reranker is not None
                else f"none ({self.kb.reranker_note})"
            ),
        }


@dataclass
class QuestionResult:
    id: str
    question: str
    answerable: bool
    split: str
    n_gold: int
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {ids, gold_hits, doc_hits, ms}
    answer: dict[str, Any] | None = None


def judge(resolver: GoldResolver, question: Question, items: list[Retrieved]) -> list[list[int]]:
    """For each item, the indices of every gold reference it covers (empty: not relevant)."""
    return [resolver.credits(item.doc_id, item.start, item.end, question.gold) for item in items]


def audit_rows(items: list[Retrieved], credited: list[list[int]]) -> list[dict[str, Any]]:
    """What each hit was, for results.jsonl: enough to re-judge it without re-running the ranking."""
    return [
        {"doc_id": i.doc_id, "span": [i.start, i.end], "gold": golds, "text": i.text[:200]}
        for i, golds in zip(items, credited, strict=True)
    ]


def run(
    system: System,
    questions: list[Question],
    resolver: GoldResolver,
    k: int = 10,
    answer_ids: set[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    checkpoint: Checkpoint | None = None,
) -> list[QuestionResult]:
    """Judge every stage of ``system`` on ``questions``; answers only for ``answer_ids``.

    With a ``checkpoint``, each finished question is appended to it and questions it already holds are not
    run again: an evaluation cut short (hours of answers on a CPU) resumes where it stopped.
    """
    results = []
    done_before = checkpoint.load() if checkpoint else {}
    for done, question in enumerate(questions, start=1):
        wants_answer = answer_ids is not None and question.id in answer_ids
        kept = done_before.get(question.id)
        if kept is not None and (kept.answer is not None or not wants_answer):
            results.append(kept)
            if progress:
                progress(done, len(questions))
            continue
        row = QuestionResult(question.id, question.question, question.answerable, question.split, len(question.gold))
        gold_docs = {gold.doc_id for gold in question.gold}
        for stage in system.stages:
            tick = time.perf_counter()
            items = system.retrieve(stage, question.question, k)
            ms = (time.perf_counter() - tick) * 1e3
            credited = judge(resolver, question, items)
            row.stages[stage] = {
                "ids": [i.node_id for i in items],
                "gold_hits": credited,
                "doc_hits": [i.doc_id in gold_docs for i in items],
                "hits": audit_rows(items, credited),
                "ms": ms,
            }
        if wants_answer:
            record = system.answer(question.question)
            cited_hits = judge(resolver, question, record.cited)
            read_hits = judge(resolver, question, record.read)
            checks = [] if record.refused else support(record.text, record.sources)
            row.answer = {
                "text": record.text,
                "refused": record.refused,
                "cited": len(record.cited),
                "cited_on_gold": sum(bool(h) for h in cited_hits),
                "supported": any(cited_hits),
                "citations": audit_rows(record.cited, cited_hits),
                "token_f1": token_f1(record.text, question.answer) if question.answer and not record.refused else None,
                "rouge_l": rouge_l(record.text, question.answer) if question.answer and not record.refused else None,
                "timings": record.timings,
                "claims": sum(c.is_claim for c in checks),
                "unsupported": [c.sentence for c in checks if not c.supported],
                # no claim backed by any source: what kb's refuse_unsupported withholds (evals replay it)
                "ungrounded": ungrounded(checks, record.sources),
                "prompt_tokens": record.prompt_tokens,
                "read": audit_rows(record.read, read_hits),  # the sources retrieved for the answer, judged
                "refusal_reason": record.refusal_reason,
            }
        results.append(row)
        if checkpoint:
            checkpoint.append(row)
        if progress:
            progress(done, len(questions))
    return results


class Checkpoint:
    """Finished question rows of one system in one evaluation, appended as JSON lines as they finish.

    The first line is the evaluation's key (its command and index); a file written under another key is
    set aside, never mixed in.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def load(self) -> dict[str, QuestionResult]:
        if not self.path.is_file():
            self._start()
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines or json.loads(lines[0]).get("key") != self.key:
            self.path.replace(self.path.with_suffix(".stale.jsonl"))
            self._start()
            return {}
        rows: dict[str, QuestionResult] = {}
        for line in lines[1:]:
            try:
                row = QuestionResult(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                break  # a line cut by a crash ends what can be trusted
            rows[row.id] = row
        # Rewritten without the cut line, so that the next append starts on a line of its own.
        self._start()
        for row in rows.values():
            self.append(row)
        return rows

    def append(self, row: QuestionResult) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"key": self.key}) + "\n", encoding="utf-8")
