"""Gold references of question sets, resolved to character spans of the source documents.

A gold reference names a document and, optionally, a section by its header path
("Payment Retries > Error E4012"). The section runs from its heading to the next heading of the same or a
higher level, so a chunk or citation "hits" the gold when its span overlaps that range.
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

    def hits(self, doc_id: str, start: int, end: int, refs: list[GoldRef]) -> bool:
        """Whether ``doc_id[start:end]`` overlaps any of the gold sections."""
        for ref in refs:
            if ref.doc_id != doc_id:
                continue
            span = self.span(ref)
            if span is None:
                raise KeyError(f"gold section {ref.header_path!r} not found in {ref.doc_id}")
            if start < span[1] and end > span[0]:
                return True
        return False
