"""AsciiDoc → blocks, by AsciiDoc's own layout rules (no Ruby, no full parse), spans into the file itself.

- Section titles: ``= Title`` … ``====== Title`` (and ``#`` … in Markdown style), and the two-line
  (setext) form used by AsciiDoc Python and git's manuals — a title over a line of ``=``, ``-``, ``~``,
  ``^`` or ``+`` of about the same length (levels 0 to 4, in that order).
- Anchors: a ``[[id]]``, ``[[id,text]]`` or ``[#id]`` line right above a title names its anchor (URLs use
  it); ``[[id]]`` at the start of the title line too.
- Delimited blocks are kept whole: listing ``----``, literal ``....``, passthrough ``++++`` (code),
  tables ``|===``, and example ``====``, sidebar ``****``, quote ``____``, comment ``////`` and open ``--``
  blocks (text). A block title line (``.Title``) stays with its block; indented lines are literal text.
- Attribute entries (``:name: value``) and ``include::`` directives are left as text: kb does not
  resolve them.

Plain ``.txt`` is ambiguous, so which files are AsciiDoc is a setting: ``*.adoc`` and ``*.asciidoc`` always,
plus ``asciidoc_patterns`` (``["*.txt"]`` for git-doc).
"""

from __future__ import annotations

import re

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps
from kb.parsers.frontmatter import split_front_matter

# A title ends with a non-blank (the lookbehind): tried at each blank of a long run, the lazy title took
# quadratic time. Possessive ids likewise in _ANCHOR.
_ATX = re.compile(r"^(={1,6}|#{1,6})[ \t]+(\S.*?)(?<![ \t])(?:[ \t]+\1)?[ \t]*$")
_SETEXT_LEVELS = {"=": 0, "-": 1, "~": 2, "^": 3, "+": 4}
_UNDERLINE = re.compile(r"^([=\-~^+])\1+[ \t]*$")
_ANCHOR = re.compile(r"^\[\[([A-Za-z_:][\w:.-]*+)(?:,[^\]]*)?\]\]\s*$|^\[#([A-Za-z_:][\w:.-]*+)[^\]]*\]\s*$")
_INLINE_ANCHOR = re.compile(r"^\[\[([A-Za-z_:][\w:.-]*)(?:,[^\]]*)?\]\]\s*")
_DELIMITERS: dict[str, BlockKind] = {
    "-": BlockKind.CODE,  # ---- listing
    ".": BlockKind.CODE,  # .... literal
    "+": BlockKind.CODE,  # ++++ passthrough
    "=": BlockKind.PARAGRAPH,  # ==== example
    "*": BlockKind.PARAGRAPH,  # **** sidebar
    "_": BlockKind.PARAGRAPH,  # ____ quote
    "/": BlockKind.OTHER,  # //// comment
}
_DELIMITER = re.compile(r"^([-.+=*_/])\1{3,}[ \t]*$")
_TABLE = re.compile(r"^[|,:!]===+[ \t]*$")
_OPEN = re.compile(r"^--[ \t]*$")
_LIST = re.compile(r"^\s*([*\-.]{1,5}|\d+\.|[a-z]\.|[ivx]+\))\s+\S|^\S.*?(::|;;)(\s|$)")
_BLOCK_TITLE = re.compile(r"^\.[^\s.].*$")


def parse_asciidoc(text: str) -> ParsedDocument:
    """Parse AsciiDoc ``text``; spans are offsets into ``text`` itself."""
    metadata, body_start = split_front_matter(text)
    doc = ParsedDocument(text=text, blocks=[], metadata=metadata, body_start=body_start)
    starts = doc.line_starts
    lines = text.split("\n")

    def offset(line: int) -> int:
        return starts[line] if line < len(starts) else len(text)

    blocks: list[Block] = []
    pending_anchor = ""
    i = doc.line_of(body_start) - 1 if body_start else 0
    while i < len(lines):
        line = lines[i]
        anchor = _ANCHOR.match(line)
        if anchor:
            pending_anchor = anchor.group(1) or anchor.group(2) or ""
            i += 1
            continue
        heading = _heading_at(lines, i)
        if heading is not None:
            title, level, used = heading
            inline = _INLINE_ANCHOR.match(title)
            if inline:
                pending_anchor, title = inline.group(1), title[inline.end() :].strip()
            blocks.append(Block(BlockKind.HEADING, offset(i), offset(i + used), level + 1, title, pending_anchor))
            pending_anchor = ""
            i += used
            continue
        if not line.strip():
            i += 1
            continue
        pending_anchor = ""
        j, kind = _block_at(lines, i)
        blocks.append(Block(kind, offset(i), offset(j)))
        i = j
    doc.blocks = fill_gaps(text, blocks, body_start)
    headings = [b for b in doc.blocks if b.kind is BlockKind.HEADING]
    doc.title = str(metadata.get("title") or (min(headings, key=lambda b: b.level).title if headings else ""))
    return doc


def _heading_at(lines: list[str], i: int) -> tuple[str, int, int] | None:
    """(title, level from 0, lines used) when a section title starts at line ``i``."""
    line = lines[i]
    atx = _ATX.match(line)
    if atx and not _DELIMITER.match(line):
        return atx.group(2).strip(), len(atx.group(1)) - 1, 1
    if i + 1 < len(lines) and _is_title_line(line):
        under = _UNDERLINE.match(lines[i + 1])
        if under and abs(len(lines[i + 1].rstrip()) - len(line.rstrip())) <= 2 and len(line.strip()) >= 2:
            return line.strip(), _SETEXT_LEVELS[under.group(1)], 2
    return None


def _is_title_line(line: str) -> bool:
    stripped = line.strip()
    return (
        bool(stripped)
        and not line[0].isspace()
        and any(ch.isalnum() for ch in stripped)
        and not _DELIMITER.match(line)
        and not _LIST.match(line)
        and not stripped.startswith(("//", ":", "[", "|", "include::", "image::"))
    )


def _block_at(lines: list[str], i: int) -> tuple[int, BlockKind]:
    """(line after the block, its kind) for the block starting at line ``i``."""
    start = i
    if _BLOCK_TITLE.match(lines[i]) and i + 1 < len(lines) and lines[i + 1].strip():
        i += 1  # ".Example title" belongs to the block below it
    line = lines[i]
    delimiter = _DELIMITER.match(line) or _TABLE.match(line) or _OPEN.match(line)
    if delimiter:
        fence = line.rstrip()
        kind = BlockKind.TABLE if _TABLE.match(line) else _DELIMITERS.get(fence[0], BlockKind.PARAGRAPH)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        return min(j + 1, len(lines)), kind
    if line[:1].isspace():  # a literal paragraph: indented lines
        j = i + 1
        while j < len(lines) and lines[j].strip() and lines[j][:1].isspace():
            j += 1
        return j, BlockKind.CODE
    kind = BlockKind.LIST if _LIST.match(line) else BlockKind.PARAGRAPH
    j = i + 1
    while j < len(lines) and lines[j].strip():
        if _heading_at(lines, j) is not None or _DELIMITER.match(lines[j]) or _TABLE.match(lines[j]):
            break
        j += 1
    if kind is BlockKind.LIST:  # list items continue across blank lines while the list goes on
        while j + 1 < len(lines) and not lines[j].strip() and (_LIST.match(lines[j + 1]) or lines[j + 1][:1].isspace()):
            j += 1
            while j < len(lines) and lines[j].strip() and _heading_at(lines, j) is None:
                j += 1
    return max(j, start + 1), kind
