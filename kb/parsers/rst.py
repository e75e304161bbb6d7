"""reStructuredText → blocks, by reST's own layout rules rather than a full docutils parse.

docutils drops source positions for most nodes and fails hard on unknown Sphinx roles and directives;
what the chunker needs is simpler: section titles (text over an underline, optionally an overline, levels
in order of first appearance) and blocks (an unindented paragraph plus everything indented under it — a
directive body, a literal block, a list item's continuation — which keeps code and tables whole).
"""

from __future__ import annotations

import re

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps
from kb.parsers.frontmatter import split_front_matter

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_UNDERLINE = re.compile(r"^([!-/:-@\[-`{-~])\1*\s*$")  # under a title: as long as the title, may be short
_CODE_START = re.compile(r"^\.\.\s+(code-block|code|sourcecode|literalinclude|highlight)::")
_TABLE_START = re.compile(r"^(\+[-=+]+\+|=+(\s+=+)+)\s*$")
_LIST_START = re.compile(r"^([-*+•]|#\.|\d+[.)]|\(\d+\))\s")


def parse_rst(text: str) -> ParsedDocument:
    """Parse reST ``text``; spans are offsets into ``text`` itself."""
    metadata, body_start = split_front_matter(text)
    doc = ParsedDocument(text=text, blocks=[], metadata=metadata, body_start=body_start)
    starts = doc.line_starts
    lines = text.split("\n")
    first_line = doc.line_of(body_start) - 1 if body_start else 0

    def offset(line: int) -> int:
        return starts[line] if line < len(starts) else len(text)

    styles: list[tuple[str, bool]] = []
    blocks: list[Block] = []
    i = first_line
    while i < len(lines):
        heading = _heading_at(lines, i)
        if heading is not None:
            title, style, n_lines = heading
            if style not in styles:
                styles.append(style)
            blocks.append(Block(BlockKind.HEADING, offset(i), offset(i + n_lines), styles.index(style) + 1, title))
            i += n_lines
            continue
        if not lines[i].strip():
            i += 1
            continue
        j = _block_end(lines, i)
        blocks.append(Block(_kind(lines[i], text[offset(i) : offset(j)]), offset(i), offset(j)))
        i = j
    doc.blocks = fill_gaps(text, blocks, body_start)
    doc.title = str(metadata.get("title") or next((b.title for b in doc.blocks if b.kind is BlockKind.HEADING), ""))
    return doc


def _heading_at(lines: list[str], i: int) -> tuple[str, tuple[str, bool], int] | None:
    """(title, (adornment char, has overline), lines used) when a section title starts at line ``i``."""
    over = _ADORNMENT.match(lines[i])
    if over and i + 2 < len(lines):
        title, under = lines[i + 1], _ADORNMENT.match(lines[i + 2])
        if under and under.group(1) == over.group(1) and _is_title(title):
            return title.strip(), (over.group(1), True), 3
    if i + 1 < len(lines) and _is_title(lines[i]) and not lines[i][0].isspace():
        under = _UNDERLINE.match(lines[i + 1])
        if under and len(lines[i + 1].rstrip()) >= len(lines[i].rstrip()):
            return lines[i].strip(), (under.group(1), False), 2
    return None


def _is_title(line: str) -> bool:
    return bool(line.strip()) and any(ch.isalnum() for ch in line) and not _ADORNMENT.match(line)


def _block_end(lines: list[str], i: int) -> int:
    """Line after the block that starts at ``i``: it runs until an unindented line follows a blank one."""
    j = i + 1
    previous_blank = False
    while j < len(lines):
        line = lines[j]
        if not line.strip():
            previous_blank = True
        elif not line[0].isspace() and (previous_blank or _heading_at(lines, j) is not None):
            break
        else:
            previous_blank = False
        j += 1
    while j > i + 1 and not lines[j - 1].strip():
        j -= 1
    return j


def _kind(first_line: str, block_text: str) -> BlockKind:
    if _TABLE_START.match(first_line):
        return BlockKind.TABLE
    if _CODE_START.match(first_line) or re.search(r"::[^\S\n]*\n\s*\n[ \t]+\S", block_text):
        return BlockKind.CODE
    if _LIST_START.match(first_line):
        return BlockKind.LIST
    return BlockKind.PARAGRAPH
