"""Plain text → paragraph blocks (blank-line separated); no headings."""

from __future__ import annotations

import re

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps
from kb.parsers.frontmatter import split_front_matter

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\n[ \t]*\n|\s*\Z)", re.DOTALL)


def parse_text(text: str) -> ParsedDocument:
    """Parse plain text; the title is the front-matter title or the first line."""
    metadata, body_start = split_front_matter(text)
    blocks = [Block(BlockKind.PARAGRAPH, m.start(), m.end()) for m in _PARAGRAPH.finditer(text, body_start)]
    doc = ParsedDocument(
        text=text, blocks=fill_gaps(text, blocks, body_start), metadata=metadata, body_start=body_start
    )
    first_line = text[body_start:].strip().split("\n", 1)[0].strip() if text[body_start:].strip() else ""
    doc.title = str(metadata.get("title") or first_line[:120])
    return doc
