"""Question sets: JSONL, one question per line (format in evals/README.md).

    {"id": "faq-programming-017", "question": "How do I ...?", "answerable": true,
     "gold": [{"doc_id": "faq/programming.rst.txt", "header_path": "Programming FAQ > ...", "span": [100, 900]}],
     "answer": "optional reference answer text", "split": "test"}

A gold reference names a document and, optionally, the section: by ``header_path``, by ``span`` (character
offsets into the document text, for sets whose builder changed the corpus), or by ``anchor`` (free text for
people). :func:`load_questions` validates every line and names the line of any bad record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import KbError
from kb.evaluation.gold import GoldRef

SPLITS = ("tune", "test")


class QuestionSetError(KbError):
    """A question set file is malformed (the message names file and line)."""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answerable: bool
    gold: list[GoldRef] = field(default_factory=list)
    answer: str = ""
    split: str = "test"


def write_question_set(
    folder: Path, name: str, records: list[dict[str, Any]], builder: str, **meta: Any
) -> dict[str, Any]:
    """Write ``folder/name.jsonl`` (one record a line) and ``name.meta.json`` (``meta``, the counts, the builder)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = {
        "questions": len(records),
        "answerable": sum(bool(r.get("answerable")) for r in records),
        "tune": sum(r.get("split") == "tune" for r in records),
    }
    full = {"set": name, **meta, **counts, "builder": builder}
    (folder / f"{name}.meta.json").write_text(json.dumps(full, indent=1) + "\n")
    return full


def load_questions(path: str | Path) -> list[Question]:
    """Read and validate a JSONL question set."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuestionSetError(f"{source}: cannot read ({exc})") from exc
    questions: list[Question] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionSetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        question = _parse(record, where)
        if question.id in seen:
            raise QuestionSetError(f"{where}: duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise QuestionSetError(f"{source}: no questions")
    return questions


def _parse(record: Any, where: str) -> Question:
    if not isinstance(record, dict):
        raise QuestionSetError(f"{where}: expected a JSON object")
    for key, kind in (("id", str), ("question", str), ("answerable", bool)):
        if not isinstance(record.get(key), kind):
            raise QuestionSetError(f"{where}: field {key!r} must be a {kind.__name__}, got {record.get(key)!r}")
    unknown = set(record) - {"id", "question", "answerable", "gold", "answer", "split"}
    if unknown:
        raise QuestionSetError(f"{where}: unknown field(s) {sorted(unknown)}")
    gold_records = record.get("gold", [])
    if not isinstance(gold_records, list):
        raise QuestionSetError(f"{where}: field 'gold' must be a list")
    if record["answerable"] and not gold_records:
        raise QuestionSetError(f"{where}: an answerable question needs at least one gold reference")
    gold = [_gold(g, f"{where}: gold[{i}]") for i, g in enumerate(gold_records)]
    split = record.get("split", "test")
    if split not in SPLITS:
        raise QuestionSetError(f"{where}: field 'split' must be one of {SPLITS}, got {split!r}")
    return Question(record["id"], record["question"], record["answerable"], gold, record.get("answer") or "", split)


def _gold(record: Any, where: str) -> GoldRef:
    if not isinstance(record, dict) or not isinstance(record.get("doc_id"), str) or not record["doc_id"]:
        raise QuestionSetError(f"{where}: needs a non-empty 'doc_id'")
    span = record.get("span")
    if span is not None and not (
        isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span) and span[0] < span[1]
    ):
        raise QuestionSetError(f"{where}: 'span' must be [start, end] with start < end, got {span!r}")
    return GoldRef(
        record["doc_id"], record.get("header_path") or "", tuple(span) if span else None, record.get("anchor") or ""
    )
