"""Markdown → blocks, with markdown-it-py (CommonMark + tables) giving each top-level block its lines."""

from __future__ import annotations

from markdown_it import MarkdownIt

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps
from kb.parsers.frontmatter import blank_out, split_front_matter

_KINDS = {
    "heading_open": BlockKind.HEADING,
    "paragraph_open": BlockKind.PARAGRAPH,
    "fence": BlockKind.CODE,
    "code_block": BlockKind.CODE,
    "table_open": BlockKind.TABLE,
    "bullet_list_open": BlockKind.LIST,
    "ordered_list_open": BlockKind.LIST,
    "blockquote_open": BlockKind.PARAGRAPH,
    "html_block": BlockKind.OTHER,
    "hr": BlockKind.OTHER,
}

_md = MarkdownIt("commonmark", {"maxNesting": 50}).enable("table")


def parse_markdown(text: str) -> ParsedDocument:
    """Parse Markdown ``text``; spans are offsets into ``text`` itself."""
    metadata, body_start = split_front_matter(text)
    doc = ParsedDocument(text=text, blocks=[], metadata=metadata, body_start=body_start)
    tokens = _md.parse(blank_out(text, body_start))
    line_starts = [*doc.line_starts, len(text)]
    blocks: list[Block] = []
    for i, token in enumerate(tokens):
        kind = _KINDS.get(token.type)
        if kind is None or token.level != 0 or token.map is None:
            continue
        first, last = token.map
        start = line_starts[min(first, len(line_starts) - 1)]
        end = line_starts[min(last, len(line_starts) - 1)]
        if kind is BlockKind.HEADING:
            title = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
            blocks.append(Block(kind, start, end, level=int(token.tag[1:]), title=title))
        else:
            blocks.append(Block(kind, start, end))
    doc.blocks = fill_gaps(text, blocks, body_start)
    doc.title = str(metadata.get("title") or _first_title(doc.blocks))
    return doc


def _first_title(blocks: list[Block]) -> str:
    headings = [b for b in blocks if b.kind is BlockKind.HEADING and b.title]
    if not headings:
        return ""
    top = min(b.level for b in headings)
    return next(b.title for b in headings if b.level == top)
