"""Word (.docx) → text and blocks, with python-docx.

Headings come from heading styles (``Title`` above ``Heading 1``…``Heading 9``, and styles based on them)
or from an outline level set on the paragraph or its style (level 0 = Heading 1); list paragraphs (numbered
or bulleted) are grouped
into one list block; tables become one block each (rows as ``cell | cell`` lines), kept whole by the chunker;
footnotes are appended at the end under "Footnotes", their references kept in the text as ``[n]``.

The archive is checked before python-docx opens it: a zip whose entries would expand past
``max_unpacked_bytes`` (or more than 200× the file) is a zip bomb, and an OLE container is either an old
binary ``.doc`` or a password-protected document; both are skipped with a reason.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps
from kb.errors import SourceError

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
MAX_RATIO = 200
MAX_ENTRIES = 20_000
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_HEADING_STYLE = re.compile(r"^(?:heading|überschrift|titre|título|titolo)\s*(\d)$", re.IGNORECASE)
_FOOTNOTES = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/footnotes"


@dataclass
class _Piece:
    kind: BlockKind
    text: str
    level: int = 0


def check_archive(data: bytes, max_unpacked_bytes: int) -> None:
    """Refuse OLE files and zip bombs before any XML is parsed."""
    if data.startswith(OLE_MAGIC):
        raise SourceError(
            "an OLE container, not a .docx: either an old binary Word document (.doc) or a password-protected "
            "one; save it as an unprotected .docx to include it"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise SourceError(f"not a .docx (not a zip archive: {exc}); the file may be truncated") from exc
    with archive:
        entries = archive.infolist()
        unpacked = sum(entry.file_size for entry in entries)
    if len(entries) > MAX_ENTRIES:
        raise SourceError(f"zip archive with {len(entries):,} entries: not a plausible .docx (zip bomb?)")
    if unpacked > max_unpacked_bytes or (unpacked > MAX_RATIO * max(len(data), 1) and unpacked > 10_000_000):
        raise SourceError(
            f"expands to {unpacked:,} bytes from {len(data):,} (zip bomb?); over the limit of "
            f"{max_unpacked_bytes:,} unpacked bytes (max_file_bytes × 5)"
        )


def parse_docx(data: bytes, max_unpacked_bytes: int = 100_000_000) -> ParsedDocument:
    """Parse a .docx; raises :class:`SourceError` for .doc, encrypted files, zip bombs and broken archives."""
    check_archive(data, max_unpacked_bytes)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise SourceError(f"not a readable .docx ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # lxml XMLSyntaxError and friends: a damaged part
        raise SourceError(f"damaged .docx ({type(exc).__name__}: {exc})") from exc
    footnotes = _footnotes(document)
    pieces = list(_body(document, footnotes))
    if footnotes:
        pieces.append(_Piece(BlockKind.HEADING, "Footnotes", 2))
        pieces.extend(_Piece(BlockKind.PARAGRAPH, f"[{n}] {text}") for n, text in footnotes.items() if text)
    parsed = _assemble(pieces)
    core_title = (document.core_properties.title or "").strip()
    first_heading = next((b.title for b in parsed.blocks if b.kind is BlockKind.HEADING), "")
    parsed.title = core_title or first_heading
    metadata = {}
    if document.core_properties.author:
        metadata["author"] = document.core_properties.author
    parsed.metadata = metadata
    return parsed


def _body(document: object, footnotes: dict[str, str]) -> list[_Piece]:
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    out: list[_Piece] = []
    body = document.element.body  # type: ignore[attr-defined]
    for child in body.iterchildren():
        if child.tag == f"{_W}p":
            paragraph = Paragraph(child, document)
            text = _paragraph_text(child, footnotes).strip()
            if not text:
                continue
            level = _heading_level(paragraph)
            if level:
                out.append(_Piece(BlockKind.HEADING, " ".join(text.split()), level))
            elif _is_list_item(paragraph):
                if out and out[-1].kind is BlockKind.LIST:
                    out[-1].text += "\n" + f"- {text}"
                else:
                    out.append(_Piece(BlockKind.LIST, f"- {text}"))
            else:
                out.append(_Piece(BlockKind.PARAGRAPH, text))
        elif child.tag == f"{_W}tbl":
            rows = []
            for row in Table(child, document).rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                deduped = [c for i, c in enumerate(cells) if i == 0 or c != cells[i - 1]]  # merged cells repeat
                if any(deduped):
                    rows.append(" | ".join(deduped))
            if rows:
                out.append(_Piece(BlockKind.TABLE, "\n".join(rows)))
    return out


def _paragraph_text(element: object, footnotes: dict[str, str]) -> str:
    parts: list[str] = []
    for node in element.iter():  # type: ignore[attr-defined]
        tag = node.tag
        if tag == f"{_W}t":
            parts.append(node.text or "")
        elif tag == f"{_W}tab":
            parts.append("\t")
        elif tag in (f"{_W}br", f"{_W}cr"):
            parts.append("\n")
        elif tag == f"{_W}footnoteReference":
            note = node.get(f"{_W}id")
            if note in footnotes:
                parts.append(f"[{note}]")
    return "".join(parts)


def _heading_level(paragraph: object) -> int:
    style = getattr(paragraph, "style", None)
    for candidate in _style_chain(style):
        name = (candidate.name or "").strip()
        if name.lower() == "title":
            return 1
        match = _HEADING_STYLE.match(name)
        if match:
            return int(match.group(1)) + 1
        level = _outline_level(candidate.element)
        if level is not None:
            return level + 2
    level = _outline_level(paragraph._p)  # type: ignore[attr-defined]
    return level + 2 if level is not None else 0


def _style_chain(style: object) -> list[object]:
    chain = []
    while style is not None and len(chain) < 10:
        chain.append(style)
        style = getattr(style, "base_style", None)
    return chain


def _outline_level(element: object) -> int | None:
    found = element.find(f"{_W}pPr/{_W}outlineLvl")  # type: ignore[attr-defined]
    if found is None:
        return None
    value = found.get(f"{_W}val")
    if value is None or not value.isdigit() or int(value) >= 9:  # 9 means "body text"
        return None
    return int(value)


def _is_list_item(paragraph: object) -> bool:
    if paragraph._p.find(f"{_W}pPr/{_W}numPr") is not None:  # type: ignore[attr-defined]
        return True
    for style in _style_chain(getattr(paragraph, "style", None)):
        if "list" in (style.name or "").lower():
            return True
        if style.element.find(f"{_W}pPr/{_W}numPr") is not None:
            return True
    return False


def _footnotes(document: object) -> dict[str, str]:
    """Footnote id → text, from the footnotes part (python-docx has no API for it)."""
    part = document.part  # type: ignore[attr-defined]
    for rel in part.rels.values():
        if rel.reltype == _FOOTNOTES and not rel.is_external:
            from lxml import etree

            try:
                root = etree.fromstring(rel.target_part.blob, etree.XMLParser(resolve_entities=False, huge_tree=False))
            except etree.XMLSyntaxError:
                return {}
            notes = {}
            for note in root.iter(f"{_W}footnote"):
                note_id = note.get(f"{_W}id")
                if note.get(f"{_W}type") in ("separator", "continuationSeparator", "continuationNotice"):
                    continue
                text = " ".join("".join(t.text or "" for t in note.iter(f"{_W}t")).split())
                if note_id is not None:
                    notes[note_id] = text
            return notes
    return {}


def _assemble(pieces: list[_Piece]) -> ParsedDocument:
    parts: list[str] = []
    blocks: list[Block] = []
    length = 0
    for piece in pieces:
        if parts:
            parts.append("\n\n")
            length += 2
        start = length
        parts.append(piece.text)
        length += len(piece.text)
        blocks.append(
            Block(piece.kind, start, length, piece.level, piece.text if piece.kind is BlockKind.HEADING else "")
        )
    text = "".join(parts)
    return ParsedDocument(text=text, blocks=fill_gaps(text, blocks))
