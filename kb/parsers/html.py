"""HTML → visible text and blocks, with a map from text offsets back to source lines.

Built on the standard library's tolerant ``html.parser`` (unclosed tags, stray end tags and broken
markup never raise), because it reports the source position of every piece of text and selectolax does
not. Scripts, styles, and navigation chrome are dropped.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps

_BLOCK_TAGS = {
    **{f"h{n}": BlockKind.HEADING for n in range(1, 7)},
    "p": BlockKind.PARAGRAPH,
    "pre": BlockKind.CODE,
    "table": BlockKind.TABLE,
    "ul": BlockKind.LIST,
    "ol": BlockKind.LIST,
    "dl": BlockKind.LIST,
    "blockquote": BlockKind.PARAGRAPH,
}
_BREAK_TAGS = {"br", "div", "section", "article", "main", "li", "tr", "dt", "dd", "hr", "figure", "aside"}
_CELL_TAGS = {"td", "th"}
_SKIP_TAGS = {"script", "style", "head", "noscript", "template", "svg", "nav", "iframe", "object"}
_SKIP_CLASSES = {"navheader", "navfooter", "navigation", "sidebar", "toc", "breadcrumbs"}
_VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}
_SPACES = re.compile(r"\s+")


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.line_starts: list[int] = [0]
        self.source_lines: list[int] = [1]
        self.blocks: list[Block] = []
        self.title = ""
        self.metadata: dict[str, str] = {}
        self._stack: list[str] = []
        self._skip_depth = 0  # >0 while inside a skipped element
        self._in_title = False
        self._block: tuple[str, BlockKind, int, int] | None = None  # tag, kind, start, depth
        self._heading_text: list[str] = []
        self._pre_depth = 0
        self._tail = ""

    # -- helpers --------------------------------------------------------------------------------
    def _emit(self, piece: str, line: int | None = None) -> None:
        if not piece:
            return
        line = self.getpos()[0] if line is None else line
        if line != self.source_lines[-1]:
            self.line_starts.append(self.length)
            self.source_lines.append(line)
        self.parts.append(piece)
        self.length += len(piece)
        self._tail = (self._tail + piece)[-2:]

    def _newline(self, count: int = 1) -> None:
        """Make the text end in at least ``count`` newlines (nothing at the very start)."""
        if not self.length:
            return
        existing = len(self._tail) - len(self._tail.rstrip("\n"))
        if existing < count:
            self._emit("\n" * (count - existing))

    def _close_block(self) -> None:
        if self._block is None:
            return
        _tag, kind, start, _depth = self._block
        level = int(_tag[1]) if kind is BlockKind.HEADING else 0
        title = _SPACES.sub(" ", "".join(self._heading_text)).strip() if kind is BlockKind.HEADING else ""
        self.blocks.append(Block(kind, start, self.length, level, title))
        self._block = None
        self._heading_text = []
        self._newline(2)

    # -- HTMLParser callbacks -------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "meta" and (attributes.get("name") or "").startswith("kb:"):
            self.metadata[(attributes["name"] or "")[3:]] = attributes.get("content") or ""
        if tag in _VOID_TAGS:
            if tag in _BREAK_TAGS and not self._skip_depth:
                self._newline()
            return
        self._stack.append(tag)
        if tag == "title":
            self._in_title = True  # <title> sits in <head>, which is otherwise skipped
        classes = set((attributes.get("class") or "").split())
        if self._skip_depth or tag in _SKIP_TAGS or classes & _SKIP_CLASSES:
            self._skip_depth += 1
            return
        if tag == "pre":
            self._pre_depth += 1
        kind = _BLOCK_TAGS.get(tag)
        if kind is not None and self._block is None:
            self._newline(2)
            self._block = (tag, kind, self.length, len(self._stack))
        elif tag in _BREAK_TAGS:
            self._newline()
        elif tag in _CELL_TAGS and self.length and not self._tail.endswith(("\n", "| ")):
            self._emit(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag not in self._stack:
            return  # stray end tag
        while self._stack:
            open_tag = self._stack.pop()
            depth = len(self._stack) + 1
            if open_tag == "title":
                self._in_title = False
            if self._skip_depth:
                self._skip_depth -= 1
            else:
                if open_tag == "pre":
                    self._pre_depth -= 1
                if self._block is not None and self._block[3] == depth:
                    self._close_block()
                elif open_tag in _BREAK_TAGS:
                    self._newline()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._skip_depth or self._in_title:
            return
        if self._block is not None and self._block[1] is BlockKind.HEADING:
            self._heading_text.append(_SPACES.sub(" ", data))
        line = self.getpos()[0]
        # Emit piece by piece so that text after a source newline maps to its own line.
        for piece in re.split(r"(\s+)", data):
            if not piece:
                continue
            if piece.isspace() and not self._pre_depth:
                if not (self._tail.endswith(("\n", " ")) or not self.length):
                    self._emit(" ", line)
            else:
                self._emit(piece, line)
            line += piece.count("\n")

    def close(self) -> None:
        super().close()
        self._close_block()


def parse_html(source: str) -> ParsedDocument:
    """Parse HTML ``source``; spans index into the extracted text, lines into ``source``."""
    extractor = _Extractor()
    extractor.feed(source)
    extractor.close()
    text = "".join(extractor.parts)
    doc = ParsedDocument(
        text=text,
        blocks=fill_gaps(text, extractor.blocks),
        metadata=dict(extractor.metadata),
        line_starts=extractor.line_starts,
        source_lines=extractor.source_lines,
    )
    first_heading = next((b.title for b in doc.blocks if b.kind is BlockKind.HEADING and b.title), "")
    doc.title = str(doc.metadata.get("title") or _SPACES.sub(" ", extractor.title).strip() or first_heading)
    return doc
