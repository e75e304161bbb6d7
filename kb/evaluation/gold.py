"""Gold references of question sets, resolved to character spans, and which golds a retrieved chunk covers.

A gold reference names a document and, optionally, a section by its header path
("Payment Retries > Error E4012") or a character span. The section runs from its heading to the next
heading of the same or a higher level.

**Relevance by coverage, not by a touch.** A chunk covers a gold when at least half of the chunk lies in the
gold, or at least half of the gold lies in the chunk (``COVERAGE``): a 60-word chunk inside a page-sized
gold is relevant; a 1,024-token chunk that contains a whole short answer is relevant; a chunk that shares a
line with the gold's last sentence, or a page-sized chunk that brushes three golds, is not. Counted in
characters of the document text, the same rule for kb and for the stock recipe. Every gold a chunk covers is
credited (nested golds — a definition inside a module's page — and two definitions in one chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kb.document import BlockKind, ParsedDocument
from kb.loading import load_file
from kb.settings import Settings


@dataclass(frozen=True)
class GoldRef:
    """A gold section: a document, and within it a header path or an explicit character span."""

    doc_id: str
    header_path: str = ""
    span: tuple[int, int] | None = None
    anchor: str = ""


def section_spans(doc: ParsedDocument) -> dict[str, tuple[int, int]]:
    """Header path → (start, end) of that section, subsections included."""
    headings = [b for b in doc.blocks if b.kind is BlockKind.HEADING]
    spans: dict[str, tuple[int, int]] = {}
    stack: list[tuple[int, str]] = []
    end_of_text = len(doc.text)
    for i, heading in enumerate(headings):
        while stack and stack[-1][0] >= heading.level:
            stack.pop()
        stack.append((heading.level, heading.title))
        end = next((h.start for h in headings[i + 1 :] if h.level <= heading.level), end_of_text)
        spans.setdefault(" > ".join(title for _, title in stack), (heading.start, end))
    return spans


class GoldResolver:
    """Resolves gold references against a corpus folder (documents parsed once, on demand)."""

    def __init__(self, corpus: Path, settings: Settings | None = None) -> None:
        self.corpus = corpus
        self.settings = settings or Settings()
        self._spans: dict[str, dict[str, tuple[int, int]]] = {}

    def span(self, ref: GoldRef) -> tuple[int, int] | None:
        """Character range of the gold section, the whole document when no header path is given."""
        if ref.span is not None:
            return ref.span
        if ref.doc_id not in self._spans:
            doc = load_file(self.corpus / ref.doc_id, ref.doc_id, self.settings).parsed
            spans = section_spans(doc)
            spans[""] = (doc.body_start, len(doc.text))
            self._spans[ref.doc_id] = spans
        return self._spans[ref.doc_id].get(ref.header_path)

    def credits(self, doc_id: str, start: int, end: int, refs: list[GoldRef]) -> list[int]:
        """Indices of the golds in ``refs`` that ``doc_id[start:end]`` covers (see the module docstring)."""
        out = []
        for i, ref in enumerate(refs):
            if ref.doc_id != doc_id:
                continue
            span = self.span(ref)
            if span is None:
                raise KeyError(f"gold section {ref.header_path!r} not found in {ref.doc_id}")
            if covers((start, end), span):
                out.append(i)
        return out

    def hits(self, doc_id: str, start: int, end: int, refs: list[GoldRef]) -> bool:
        """Whether ``doc_id[start:end]`` covers any of the gold sections."""
        return bool(self.credits(doc_id, start, end, refs))


COVERAGE = 0.5


def covers(chunk: tuple[int, int], gold: tuple[int, int]) -> bool:
    """At least ``COVERAGE`` of the chunk lies in the gold, or of the gold in the chunk.

    >>> covers((100, 200), (0, 10_000))       # a chunk inside a page-sized gold
    True
    >>> covers((0, 4000), (3990, 4200))       # a big chunk that brushes the gold: not relevant
    False
    >>> covers((0, 4000), (1000, 1300))       # a big chunk that holds the whole answer
    True
    """
    overlap = min(chunk[1], gold[1]) - max(chunk[0], gold[0])
    if overlap <= 0:
        return False
    shorter = min(chunk[1] - chunk[0], gold[1] - gold[0])
    return overlap >= COVERAGE * shorter
