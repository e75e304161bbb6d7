"""PDF → text with headings and page spans, from the text layer, with pypdfium2 (PDFium, Apache-2.0/BSD).

PDFium was chosen over pdfminer.six and pypdf by measurement on Debian's real manuals
(``evals/reports/formats.md``): it is the fastest by an order of magnitude, its text is in content order
with correct word spacing, and it exposes each character's font size, weight and name — what headings
are recognised by when a file has no outline. PyMuPDF (AGPL) is not an option for an Apache-2.0 product.

What the text becomes:
- **Headings** come from the outline (bookmarks) when the file has one: each title is found on its
  destination page (its line becomes the heading; a title the page does not show is inserted before the
  page's text). Without an outline, lines set larger than the body text (levels by size), or short lines
  in bold at body size standing alone, are headings.
- **Running headers and footers** (a line that recurs at the top or bottom of most pages, digits
  ignored) and bare page numbers are dropped; a word hyphenated at a line end is joined.
- **Paragraphs** break at short lines that end a sentence; lines in a monospaced font form code blocks
  (kept whole by the chunker).
- ``page_starts`` maps offsets to pages, so every chunk's span carries its pages.

A file without a text layer (a scan), an encrypted file, or one over ``max_pages`` raises
:class:`SourceError` with a reason that says so; OCR is not built in.
"""

from __future__ import annotations

import ctypes
import re
import statistics
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass

from kb.document import Block, BlockKind, ParsedDocument, fill_gaps
from kb.errors import SourceError

HEADING_SIZE_RATIO = 1.06  # a line set this much larger than the body text is a heading
MAX_HEADING_CHARS = 120
_DIGITS = re.compile(r"\d+")
_PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?(\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:/|of)\s*\d{1,4})?\s*$", re.IGNORECASE)
_MONO = re.compile(r"mono|courier|typewriter|consol|menlo|\bcm?tt\d*|sfmono|inconsolata", re.IGNORECASE)
_NUMBERING = re.compile(r"^\s*((\d+|[A-Z])(\.\d+)*\.?|chapter\s+\d+[.:]?|appendix\s+[a-z][.:]?)\s+", re.IGNORECASE)


@dataclass
class _Line:
    text: str
    page: int  # 0-based
    size: float
    bold: bool
    mono: bool
    heading_level: int = 0
    anchor_title: str = ""


def parse_pdf(data: bytes, max_pages: int = 2000) -> ParsedDocument:
    """Parse a PDF's text layer; raises :class:`SourceError` for scans, encrypted files and page bombs."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc).lower()
        if "password" in message:
            raise SourceError("encrypted PDF (needs a password); decrypt it or leave it out") from exc
        raise SourceError(f"not a readable PDF ({exc}); the file may be truncated or damaged") from exc
    try:
        pages = len(pdf)
        if pages > max_pages:
            raise SourceError(f"{pages:,} pages is over max_pdf_pages={max_pages:,}; raise the setting to include it")
        lines = _read_lines(pdf, pages)
        if sum(len(line.text.strip()) for line in lines) < 5 * max(pages, 1):  # not even a page number each
            raise SourceError(
                "no text layer (a scanned PDF?); OCR is not built in: add a text version or run OCR first"
            )
        outline = _outline(pdf)
        title = _metadata_title(pdf)
    finally:
        pdf.close()
    lines = _drop_running_lines(lines, pages)
    if outline:
        lines = _apply_outline(lines, outline)
    else:
        _headings_by_font(lines)
    return _assemble(lines, title)


def _read_lines(pdf: object, pages: int) -> list[_Line]:
    import pypdfium2.raw as raw

    out: list[_Line] = []
    name = ctypes.create_string_buffer(128)
    flags = ctypes.c_int()
    for number in range(pages):
        page = pdf[number]  # type: ignore[index]
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_range()
            count = textpage.count_chars()
            position = 0
            for raw_line in re.split(r"\r\n|\r|\n", text):
                first = position + (len(raw_line) - len(raw_line.lstrip()))
                last = position + len(raw_line.rstrip()) - 1
                position += len(raw_line) + (
                    2 if text[position + len(raw_line) : position + len(raw_line) + 2] == "\r\n" else 1
                )
                if not raw_line.strip() or first >= count:
                    out.append(_Line("", number, 0.0, False, False))
                    continue
                size = raw.FPDFText_GetFontSize(textpage, first)
                last_size = raw.FPDFText_GetFontSize(textpage, min(last, count - 1))
                weight = raw.FPDFText_GetFontWeight(textpage, first)
                raw.FPDFText_GetFontInfo(textpage, first, name, len(name), ctypes.byref(flags))
                font = name.value.decode("latin-1", "replace")
                out.append(
                    _Line(
                        _clean(raw_line),
                        number,
                        round(min(size, last_size) * 2) / 2,  # a line is as large as its smallest end
                        weight >= 600 or "bold" in font.lower(),
                        bool(_MONO.search(font)),
                    )
                )
        finally:
            textpage.close()
            page.close()
        out.append(_Line("", number, 0.0, False, False))
    return out


def _clean(line: str) -> str:
    # PDFium marks soft hyphens and ligature-less word joins with control characters.
    return "".join(ch for ch in line.rstrip() if ch == "\t" or ch.isprintable()).replace("\u00ad", "-")


def _outline(pdf: object) -> list[tuple[int, str, int]]:
    """(level, title, 0-based page) of each bookmark with a destination, in document order."""
    out = []
    try:
        for item in pdf.get_toc(max_depth=8):  # type: ignore[attr-defined]
            dest = item.get_dest()
            index = dest.get_index() if dest is not None else None
            title = " ".join(item.get_title().split())
            if index is not None and title:
                out.append((item.level + 1, title, int(index)))
    except Exception:
        return []  # a broken outline is no outline: fall back to fonts
    return out


def _metadata_title(pdf: object) -> str:
    try:
        return str((pdf.get_metadata_dict() or {}).get("Title", "")).strip()  # type: ignore[attr-defined]
    except Exception:
        return ""


def _signature(text: str) -> str:
    return _DIGITS.sub("#", " ".join(text.lower().split()))


def _body_size(lines: list[_Line]) -> float:
    """The font size most of the text is set in."""
    weights: Counter[float] = Counter()
    for line in lines:
        if line.text.strip():
            weights[line.size] += len(line.text)
    return weights.most_common(1)[0][0] if weights else 0.0


def _drop_running_lines(lines: list[_Line], pages: int) -> list[_Line]:
    """Without lines that recur at the top or bottom of most pages, and bare page numbers there.

    Lines set larger than the body are never running lines: "Chapter 3: …" on every page is a heading."""
    body = _body_size(lines)
    by_page: dict[int, list[int]] = {}
    for i, line in enumerate(lines):
        if line.text.strip() and line.size < body * HEADING_SIZE_RATIO:
            by_page.setdefault(line.page, []).append(i)
    edges: Counter[str] = Counter()
    edge_lines: dict[int, str] = {}
    for indices in by_page.values():
        for i in indices[:2] + indices[-2:]:
            signature = _signature(lines[i].text)
            if i not in edge_lines:
                edge_lines[i] = signature
                edges[signature] += 1
    threshold = max(3, int(0.5 * len(by_page)))
    drop = {
        i
        for i, signature in edge_lines.items()
        if (pages >= 3 and edges[signature] >= threshold) or _PAGE_NUMBER.match(lines[i].text)
    }
    return [line for i, line in enumerate(lines) if i not in drop]


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", _NUMBERING.sub("", text).lower()).split())


def _apply_outline(lines: list[_Line], outline: list[tuple[int, str, int]]) -> list[_Line]:
    """Mark the line that shows each bookmark's title on its page; insert titles a page does not show."""
    inserts: dict[int, list[_Line]] = {}
    start_of_page: dict[int, int] = {}
    for i, line in enumerate(lines):
        start_of_page.setdefault(line.page, i)
    # Each line under every title it shows: one lookup per bookmark. Scanning the page per bookmark took
    # bookmarks × lines (1.5 s for 800 bookmarks on one page).
    showing: dict[tuple[int, str], list[int]] = {}
    for i, line in enumerate(lines):
        for title in _titles_shown(line.text):
            showing.setdefault((line.page, title), []).append(i)
    cursor = 0
    for level, title, page in outline:
        candidates = showing.get((page, _normal(title)), [])
        begin = max(cursor, start_of_page.get(page, len(lines)))
        after = range(bisect_left(candidates, begin), len(candidates))  # indices: a slice would copy the rest
        found = next((candidates[j] for j in after if not lines[candidates[j]].heading_level), None)
        if found is not None:
            lines[found].heading_level = level
            cursor = found + 1
        elif page in start_of_page:
            inserts.setdefault(start_of_page[page], []).append(_Line(title, page, 0.0, True, False, level))
    out: list[_Line] = []
    for i, line in enumerate(lines):
        out.extend(inserts.get(i, []))
        out.append(line)
    return out


def _titles_shown(line: str) -> list[str]:
    """The bookmark titles (normalised) a line is the heading of: itself, or itself less a short prefix such
    as a section number the outline leaves out (up to 12 characters) — never a sentence that ends with them."""
    have = _normal(line)
    return [have[cut:] for cut in range(min(len(have), 1 if line.rstrip().endswith(".") else 13))]


def _headings_by_font(lines: list[_Line]) -> None:
    """Headings from type: larger than the body (levels by size), or bold lines standing alone."""
    body = _body_size(lines)
    if not body:
        return
    larger = sorted({line.size for line in lines if line.size >= body * HEADING_SIZE_RATIO}, reverse=True)
    levels = {size: n + 1 for n, size in enumerate(larger[:5])}
    for i, line in enumerate(lines):
        text = line.text.strip()
        if not text or len(text) > MAX_HEADING_CHARS or text.endswith((".", ",", ";")) or not _starts_like_title(text):
            continue
        if line.size in levels:
            line.heading_level = levels[line.size]
            continue
        alone = (i == 0 or not lines[i - 1].text.strip() or lines[i - 1].heading_level) and (
            i + 1 < len(lines) and lines[i + 1].text.strip() and not lines[i + 1].bold
        )
        if line.bold and not line.mono and line.size >= body and alone and len(text.split()) <= 8:
            line.heading_level = len(levels) + 1


def _starts_like_title(text: str) -> bool:
    return text[0].isupper() or text[0].isdigit()


def _assemble(lines: list[_Line], title: str) -> ParsedDocument:
    """Text, blocks and page starts from the kept lines: paragraphs, code, headings, joined hyphenation."""
    parts: list[str] = []
    blocks: list[Block] = []
    page_starts: list[int] = []
    length = 0
    body_lengths = [len(line.text) for line in lines if line.text.strip() and not line.heading_level]
    full_line = statistics.median(body_lengths) if body_lengths else 80
    block_start: int | None = None
    block_kind = BlockKind.PARAGRAPH
    current_page = -1

    def emit(piece: str) -> None:
        nonlocal length
        parts.append(piece)
        length += len(piece)

    def close_block() -> None:
        nonlocal block_start
        if block_start is not None and length > block_start:
            blocks.append(Block(block_kind, block_start, length))
        block_start = None

    previous: _Line | None = None
    for line in lines:
        if line.page != current_page:
            while len(page_starts) <= line.page:
                page_starts.append(length)
            current_page = line.page
        text = line.text.strip() if not line.mono else line.text.rstrip()
        if not text:
            close_block()
            previous = None
            continue
        if line.heading_level:
            close_block()
            if length:
                emit("\n\n")
            start = length
            emit(text)
            blocks.append(Block(BlockKind.HEADING, start, length, line.heading_level, " ".join(text.split())))
            previous = None
            continue
        kind = BlockKind.CODE if line.mono else BlockKind.PARAGRAPH
        breaks = (
            block_start is None
            or kind is not block_kind
            or (
                previous is not None
                and kind is BlockKind.PARAGRAPH
                and len(previous.text) < 0.8 * full_line
                and previous.text.rstrip().endswith((".", ":", "!", "?"))
            )
        )
        if breaks:
            close_block()
            if length:
                emit("\n\n")
            block_start, block_kind = length, kind
        elif kind is BlockKind.PARAGRAPH and re.search(r"[A-Za-z]-$", parts[-1]) and text[:1].islower():
            parts[-1] = parts[-1][:-1]  # "docu-" + "ment" → "document"
            length -= 1
        else:
            emit("\n")
        emit(text)
        previous = line
    close_block()
    text = "".join(parts)
    first_heading = next((b.title for b in blocks if b.kind is BlockKind.HEADING), "")
    doc = ParsedDocument(text=text, blocks=fill_gaps(text, blocks), page_starts=page_starts or [0])
    doc.title = title or first_heading
    return doc
