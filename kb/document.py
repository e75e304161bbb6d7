"""The parsed form of one source file: its text, its structure as blocks, and where each block lies.

Parsers (``kb.parsers``) turn a file into a :class:`ParsedDocument`; the chunker packs its blocks into
chunks. Block spans index into ``ParsedDocument.text``. For Markdown, reStructuredText and plain text that
text *is* the file, so spans are file offsets; for HTML it is the visible text, and
:meth:`ParsedDocument.line_of` maps offsets back to lines of the HTML source.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class BlockKind(StrEnum):
    """What a block is; the chunker keeps ``CODE`` and ``TABLE`` whole unless one alone is over the cap."""

    HEADING = "heading"
    PARAGRAPH = "paragraph"
    LIST = "list"
    CODE = "code"
    TABLE = "table"
    OTHER = "other"


ATOMIC_KINDS = frozenset({BlockKind.CODE, BlockKind.TABLE})


@dataclass(frozen=True)
class Block:
    """A run of ``text[start:end]`` with one kind; headings carry their level (1 = top) and title."""

    kind: BlockKind
    start: int
    end: int
    level: int = 0
    title: str = ""


@dataclass(frozen=True)
class Span:
    """Where a chunk lies: char offsets into the document text and the 1-based source line range."""

    start: int
    end: int
    line_start: int
    line_end: int

    def as_list(self) -> list[int]:
        return [self.start, self.end, self.line_start, self.line_end]

    @classmethod
    def from_list(cls, values: list[int]) -> Span:
        return cls(*values)


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

    def __post_init__(self) -> None:
        if not self.line_starts:
            self.line_starts = [0] + [i + 1 for i, ch in enumerate(self.text) if ch == "\n"]
            self.source_lines = list(range(1, len(self.line_starts) + 1))

    def line_of(self, offset: int) -> int:
        """1-based source line holding the character at ``offset``."""
        index = max(bisect.bisect_right(self.line_starts, offset) - 1, 0)
        return self.source_lines[index]

    def span(self, start: int, end: int) -> Span:
        """The :class:`Span` of ``text[start:end]`` (``end`` exclusive)."""
        return Span(start, end, self.line_of(start), self.line_of(max(end - 1, start)))


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
        out.append(Block(block.kind, block_start, block.end, block.level, block.title))
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
    return Block(block.kind, start, end, block.level, block.title)
