"""Heading-aware, size-bounded chunking.

    >>> from kb.chunking import HeadingChunker
    >>> from kb.parsers.markdown import parse_markdown
    >>> chunker = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=200)   # doctest: +SKIP
    >>> for chunk in chunker.chunk(parse_markdown(open("guide.md").read())):     # doctest: +SKIP
    ...     print(chunk.header_path, chunk.span, chunk.tokens)

Rules, in order:
1. Headings open sections; each chunk carries the path of headings above it ("Guide > Install > Linux").
2. A section that fits under the cap is one chunk. A longer one is packed block by block; code blocks and
   tables stay whole unless one alone is over the cap; a block over the cap splits on sentence/line
   boundaries, and a sentence over the cap on token boundaries.
3. A chunk under ``min_tokens`` absorbs the next section when the two fit under the cap.
4. A chunk's text is exactly ``text[start:end]`` of the document: concatenated in order, the chunks hold
   every non-whitespace character of the body once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from kb.document import ATOMIC_KINDS, Block, BlockKind, ParsedDocument, Span
from kb.errors import SourceError
from kb.tokens import TokenCounter

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_LINE_END = re.compile(r"\n+")
CHARS_PER_TOKEN_LIMIT = 12  # a word piece is rarely longer; guards against 1 MB "words" read as one [UNK]


@dataclass
class Chunk:
    """One chunk: ``text == document.text[span.start:span.end]``; ``anchor`` is its section's own anchor
    when the document names one (URLs use it, or a slug of the heading when empty)."""

    text: str
    span: Span
    header_path: list[str]
    tokens: int
    index: int = 0
    anchor: str = ""


@dataclass
class _Unit:
    start: int
    end: int
    tokens: int
    header_path: list[str] = field(default_factory=list)


@dataclass
class _Draft:
    header_path: list[str]
    units: list[_Unit] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.units)

    def dominant_path(self) -> list[str]:
        """Header path of the section that holds most of the draft's tokens (a tiny heading or intro
        merged into the next section should not be what a citation points at)."""
        weight: dict[tuple[str, ...], int] = {}
        for unit in self.units:
            key = tuple(unit.header_path or self.header_path)
            weight[key] = weight.get(key, 0) + unit.tokens
        return list(max(weight.items(), key=lambda item: item[1])[0]) if weight else self.header_path


class HeadingChunker:
    """Splits documents at headings into chunks of at most ``max_tokens`` embedder tokens; sections (with the
    next ones, when they fit) smaller than ``min_tokens`` merge. Its LlamaIndex face is
    :class:`kb.llamaindex.node_parser.HeadingNodeParser`."""

    def __init__(self, counter: TokenCounter, max_tokens: int = 200, min_tokens: int = 48) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 8:
            raise ValueError(f"max_tokens: expected a whole number of tokens of at least 8, got {max_tokens!r}")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0:
            raise ValueError(f"min_tokens: expected a whole number of tokens, 0 or more, got {min_tokens!r}")
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self._counter = counter

    @property
    def counter(self) -> TokenCounter:
        return self._counter

    def __getattr__(self, name: str) -> Any:
        if name in ("get_nodes_from_documents", "aget_nodes_from_documents", "class_name"):
            raise AttributeError(
                f"HeadingChunker.{name}: the chunker is no longer a LlamaIndex NodeParser itself; use "
                "kb.llamaindex.HeadingNodeParser(chunker), or chunk(parsed_document)"
            )
        raise AttributeError(f"'HeadingChunker' object has no attribute {name!r}")

    @classmethod
    def for_model(cls, model: str, **options: Any) -> HeadingChunker:
        from kb.embedding import resolve_model_path

        return cls(TokenCounter.for_model(resolve_model_path(model)), **options)

    def chunk(self, doc: ParsedDocument, deadline: float | None = None) -> list[Chunk]:
        """Chunks of ``doc`` in document order; past ``deadline`` (``time.monotonic()``) raises ChunkingTimeout."""
        text = doc.text
        blocks = doc.blocks
        block_tokens = self._counter.count([text[b.start : b.end] for b in blocks])
        drafts: list[_Draft] = []
        pending: _Draft | None = None
        sections = _sections(blocks)
        anchors = {tuple(path): blocks[members[0]].anchor for path, members in sections if path}
        for path, members in sections:
            _check(deadline)
            units = [unit for i in members for unit in self._units(text, blocks[i], block_tokens[i], deadline)]
            for unit in units:
                unit.header_path = path
            if not units:
                continue
            section_tokens = sum(u.tokens for u in units)
            if pending is not None and self._absorbs(pending, units, section_tokens):
                pending.units.extend(units)
                continue
            # A tiny leftover (often a bare heading) leads into the next section's first chunk.
            carry = pending.units if pending is not None and pending.tokens < self.min_tokens else []
            if pending is not None and not carry:
                drafts.append(pending)
            packed = self._pack(path, units, carry)
            drafts.extend(packed[:-1])
            pending = packed[-1]
        if pending is not None:
            drafts.append(pending)
        chunks = self._finish(doc, drafts)
        for chunk in chunks:
            chunk.anchor = anchors.get(tuple(chunk.header_path), "")
        return chunks

    def _absorbs(self, pending: _Draft, units: list[_Unit], tokens: int) -> bool:
        """Whether a tiny ``pending`` chunk takes the whole next section in."""
        return (
            pending.tokens < self.min_tokens
            and pending.tokens + tokens <= self.max_tokens
            and units[-1].end - pending.units[0].start <= self.max_tokens * CHARS_PER_TOKEN_LIMIT
        )

    def _units(self, text: str, block: Block, tokens: int, deadline: float | None = None) -> list[_Unit]:
        """The block as one unit, or as pieces of at most ``max_tokens`` when it is over the cap."""
        max_chars = self.max_tokens * CHARS_PER_TOKEN_LIMIT
        if tokens <= self.max_tokens and block.end - block.start <= max_chars:
            return [_Unit(block.start, block.end, tokens)]
        boundary = _LINE_END if block.kind in ATOMIC_KINDS else _SENTENCE_END
        pieces = _split_at(text, block.start, block.end, boundary)
        counts = self._counter.count([text[s:e] for s, e in pieces])
        units: list[_Unit] = []
        for (start, end), count in zip(pieces, counts, strict=True):
            _check(deadline)
            if count <= self.max_tokens and end - start <= max_chars:
                units.append(_Unit(start, end, count))
            else:
                units.extend(self._hard_split(text, start, end))
        return [u for draft in self._pack([], units) for u in _merged(draft)]

    def _hard_split(self, text: str, start: int, end: int) -> list[_Unit]:
        """Split on token boundaries, and on characters for runs the tokenizer reads as one token."""
        offsets = self._counter.offsets(text[start:end])
        max_chars = self.max_tokens * CHARS_PER_TOKEN_LIMIT
        units: list[_Unit] = []
        cursor = start
        for i in range(0, len(offsets), self.max_tokens):
            window = offsets[i : i + self.max_tokens]
            if i + self.max_tokens >= len(offsets):
                cut = end
            else:  # where the next window's first token starts: one character may be several tokens ("말")
                cut = start + offsets[i + self.max_tokens][0]
                if cut <= cursor:
                    cut = start + window[-1][1]
            while cut - cursor > max_chars:
                units.append(_Unit(cursor, cursor + max_chars, self.max_tokens))
                cursor += max_chars
            if text[cursor:cut].strip():
                units.append(_Unit(cursor, cut, min(len(window), self.max_tokens)))
            cursor = cut
        if end > cursor and text[cursor:end].strip():
            units.append(_Unit(cursor, end, 1))
        return units

    def _fit(self, text: str, start: int, end: int) -> list[_Unit]:
        """Pieces of ``text[start:end]`` that each count at most ``max_tokens`` as they stand: a piece cut out of a
        word tokenizes anew ("000000" → "000" + "000" is more word pieces), so each is re-counted and cut again
        while over. Terminates: an over-cap span has more than ``max_tokens`` tokens, so it splits into shorter ones."""
        pieces = self._hard_split(text, start, end)
        counts = self._counter.count([text[u.start : u.end] for u in pieces])
        fitted: list[_Unit] = []
        for unit, count in zip(pieces, counts, strict=True):
            shorter = (unit.start, unit.end) != (start, end)
            if count <= self.max_tokens or not shorter:
                fitted.append(_Unit(unit.start, unit.end, count))
            else:
                fitted.extend(self._fit(text, unit.start, unit.end))
        return fitted

    def _pack(self, path: list[str], units: list[_Unit], carry: list[_Unit] | None = None) -> list[_Draft]:
        drafts = [_Draft(path, list(carry or []))]
        max_chars = self.max_tokens * CHARS_PER_TOKEN_LIMIT
        for unit in units:
            current = drafts[-1]
            over_tokens = current.tokens + unit.tokens > self.max_tokens
            over_chars = current.units and unit.end - current.units[0].start > max_chars
            if current.units and (over_tokens or over_chars):
                drafts.append(_Draft(path))
            drafts[-1].units.append(unit)
        return drafts

    def _finish(self, doc: ParsedDocument, drafts: list[_Draft]) -> list[Chunk]:
        spans = [(d.units[0].start, d.units[-1].end) for d in drafts if d.units]
        paths = [d.dominant_path() for d in drafts if d.units]
        # Counts of the joined text can differ from the sum of its units at odd boundaries: re-check.
        counts = self._counter.count([doc.text[s:e] for s, e in spans])
        chunks: list[Chunk] = []
        for (start, end), path, count in zip(spans, paths, counts, strict=True):
            pieces = [_Unit(start, end, count)] if count <= self.max_tokens else self._fit(doc.text, start, end)
            for piece in pieces:
                chunks.append(
                    Chunk(doc.text[piece.start : piece.end], doc.span(piece.start, piece.end), list(path), piece.tokens)
                )
        for i, chunk in enumerate(chunks):
            chunk.index = i
        return chunks


class ChunkingTimeout(SourceError):
    """Chunking one document took longer than allowed (``max_file_seconds``)."""


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ChunkingTimeout("chunking ran past max_file_seconds")


def _sections(blocks: list[Block]) -> list[tuple[list[str], list[int]]]:
    """Group block indices into sections: (header path, [heading block, body blocks...])."""
    sections: list[tuple[list[str], list[int]]] = [([], [])]
    stack: list[tuple[int, str]] = []
    for i, block in enumerate(blocks):
        if block.kind is BlockKind.HEADING:
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.title))
            sections.append(([title for _, title in stack], [i]))
        else:
            sections[-1][1].append(i)
    return [s for s in sections if s[1]]


def _split_at(text: str, start: int, end: int, boundary: re.Pattern[str]) -> list[tuple[int, int]]:
    pieces: list[tuple[int, int]] = []
    cursor = start
    for match in boundary.finditer(text, start, end):
        if match.start() > cursor:
            pieces.append((cursor, match.start()))
        cursor = match.end()
    if end > cursor:
        pieces.append((cursor, end))
    return pieces


def _merged(draft: _Draft) -> list[_Unit]:
    if not draft.units:
        return []
    return [_Unit(draft.units[0].start, draft.units[-1].end, draft.tokens)]
