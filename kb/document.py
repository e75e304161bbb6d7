"""The parsed form of one source file: its text, its structure as blocks, and where each block lies.

Parsers (``kb.parsers``) turn a file into a :class:`ParsedDocument`; the chunker packs its blocks into
chunks. Block spans index into ``ParsedDocument.text``. For Markdown, reStructuredText and plain text that
text *is* the file, so spans are file offsets; for HTML, PDF and Word it is the extracted text:
:meth:`ParsedDocument.line_of` maps offsets back to lines of the HTML source, and for PDFs
``page_starts`` maps them to pages (a span then carries its first and last page).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kb.errors import SourceError


class BlockKind(StrEnum):
    """What a block is; the chunker keeps ``CODE`` and ``TABLE`` whole unless one alone is over the cap."""

    HEADING = "heading"
    PARAGRAPH = "paragraph"
    LIST = "list"
    CODE = "code"
    TABLE = "table"
    OTHER = "other"


ATOMIC_KINDS = frozenset({BlockKind.CODE, BlockKind.TABLE})
# A title or heading is carried by every chunk under it (header path, BM25 text, the embedder's context) and
# metadata by every chunk of its document: a 20,000-word title cost a minute and 2 GB outside the parse limits.
MAX_TITLE_CHARS = 300
MAX_METADATA_BYTES = 64 * 1024


def check_metadata_size(values: dict[str, Any], what: str) -> None:
    """A SourceError when ``values`` take over ``MAX_METADATA_BYTES`` as UTF-8 JSON: they go into every chunk."""
    size = len(json.dumps(values, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise SourceError(
            f"{what} is {size // 1024} KB, over {MAX_METADATA_BYTES // 1024} KB: it is copied into every chunk; "
            "move long text into the document's body"
        )


def shorten(title: str) -> str:
    """``title`` cut to ``MAX_TITLE_CHARS`` at a word boundary, with an ellipsis when cut."""
    if len(title) <= MAX_TITLE_CHARS:
        return title
    title = " ".join(title.split())  # a run of blanks is not worth the room
    if len(title) <= MAX_TITLE_CHARS:
        return title
    cut = title[: MAX_TITLE_CHARS - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > MAX_TITLE_CHARS // 2 else cut).rstrip() + "…"


@dataclass(frozen=True)
class Block:
    """A run of ``text[start:end]`` with one kind; headings carry their level (1 = top), title and, when the
    source names one (``[[id]]``, ``id="..."``, ``.. _label:``), the anchor a URL can point at."""

    kind: BlockKind
    start: int
    end: int
    level: int = 0
    title: str = ""
    anchor: str = ""

    def __post_init__(self) -> None:
        if len(self.title) > MAX_TITLE_CHARS:
            object.__setattr__(self, "title", shorten(self.title))


@dataclass(frozen=True)
class Span:
    """Where a chunk lies: char offsets into the document text, the 1-based source line range and, for
    paged formats (PDF), the 1-based page range (0 when the format has no pages)."""

    start: int
    end: int
    line_start: int
    line_end: int
    page_start: int = 0
    page_end: int = 0

    def as_list(self) -> list[int]:
        lines = [self.start, self.end, self.line_start, self.line_end]
        return [*lines, self.page_start, self.page_end] if self.page_start else lines

    @classmethod
    def from_list(cls, values: list[int]) -> Span:
        return cls(*values[:6])

    def where(self) -> str:
        """``p. 12`` / ``pp. 12–13`` for paged documents, ``lines 3–9`` otherwise."""
        if self.page_start:
            same = self.page_end in (0, self.page_start)
            return f"p. {self.page_start}" if same else f"pp. {self.page_start}–{self.page_end}"
        return f"lines {self.line_start}–{self.line_end}"


@dataclass
class ParsedDocument:
    """A source file parsed into blocks. ``body_start`` skips front matter, which is metadata, not text."""

    text: str
    blocks: list[Block]
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    body_start: int = 0
    # Sorted text offsets at which a new source line begins (``line_starts[0] == 0``); HTML parsers
    # fill it with the offsets where each source line's text lands.
    line_starts: list[int] = field(default_factory=list)
    source_lines: list[int] = field(default_factory=list)
    page_starts: list[int] = field(default_factory=list)  # text offset where each page begins (PDF)

    def __post_init__(self) -> None:
        if not self.line_starts:
            self.line_starts = [0] + [i + 1 for i, ch in enumerate(self.text) if ch == "\n"]
            self.source_lines = list(range(1, len(self.line_starts) + 1))

    def line_of(self, offset: int) -> int:
        """1-based source line holding the character at ``offset``."""
        index = max(bisect.bisect_right(self.line_starts, offset) - 1, 0)
        return self.source_lines[index]

    def page_of(self, offset: int) -> int:
        """1-based page holding the character at ``offset`` (0 for documents without pages)."""
        return bisect.bisect_right(self.page_starts, offset) if self.page_starts else 0

    def span(self, start: int, end: int) -> Span:
        """The :class:`Span` of ``text[start:end]`` (``end`` exclusive)."""
        last = max(end - 1, start)
        return Span(start, end, self.line_of(start), self.line_of(last), self.page_of(start), self.page_of(last))


def fill_gaps(text: str, blocks: list[Block], start: int = 0) -> list[Block]:
    """Sort ``blocks`` and add ``OTHER`` blocks for any non-blank text between them.

    Parsers may skip constructs (link definitions, comments); this guarantees that every non-whitespace
    character of the body lies in exactly one block, the invariant the chunk-coverage tests check.
    """
    out: list[Block] = []
    cursor = start
    for block in sorted(blocks, key=lambda b: (b.start, b.end)):
        if block.end <= cursor:
            continue
        block_start = max(block.start, cursor)
        if text[cursor:block_start].strip():
            out.append(Block(BlockKind.OTHER, cursor, block_start))
        out.append(Block(block.kind, block_start, block.end, block.level, block.title, block.anchor))
        cursor = block.end
    if text[cursor:].strip():
        out.append(Block(BlockKind.OTHER, cursor, len(text)))
    return [trim(text, b) for b in out if text[b.start : b.end].strip()]


def trim(text: str, block: Block) -> Block:
    """The block without leading/trailing whitespace, so spans point at content."""
    start, end = block.start, block.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Block(block.kind, start, end, block.level, block.title, block.anchor)
