"""What the web page reads besides answers: a document's section around a cited span, and filter choices.

    view = document_view(kb.store, "docs:runbooks/rotate-api-keys.md", readable=["__public__"], chunk=node_id)
    view["sections"][0]["blocks"][0]   # {"kind": "heading", "level": 1, "text": "Rotating API keys", ...}

Both read chunk payloads from the store (never the files: an index may be served without its documents
folder), through :class:`kb.records.ChunkRecord`, and only chunks the caller's ``readable`` ACL values allow,
with the same payload condition search uses. A document is shown as plain text blocks (headings, paragraphs,
code), so no markup of a document ever reaches the browser as markup.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from kb.records import ATX_TITLE, ChunkRecord
from kb.store.base import ACL_FIELD, ChunkStore

DEFAULT_AROUND = 40  # chunks shown on each side of the cited one: a section and its neighbours
MAX_AROUND = 500
MAX_FACET_VALUES = 200  # per field: a filter with more choices than this is not a menu any more
_INT64 = 2**63
_NOTHING = "\x00nothing"  # an ACL value no chunk carries (an empty readable list reads nothing)

_ATX = re.compile(rf"^ {{0,3}}(#{{1,6}})[ \t]+{ATX_TITLE}")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class ViewBlock:
    """One readable block of a chunk: ``kind`` is heading, text, table or code (shown as preformatted text);
    ``start``/``end`` are document offsets."""

    kind: str
    text: str
    start: int
    end: int
    level: int = 0
    cited: bool = False


def readable_scope(readable: list[str] | None) -> dict[str, list[Any]]:
    """The payload condition that limits a scroll to what ``readable`` allows (``None``: everything)."""
    return {} if readable is None else {ACL_FIELD: list(readable) or [_NOTHING]}


def document_view(
    store: ChunkStore,
    doc_id: str,
    readable: list[str] | None,
    chunk: str | None = None,
    cited: tuple[int, int] | None = None,
    around: int = DEFAULT_AROUND,
    current_hash: str = "",
) -> dict[str, Any] | None:
    """The chunks of ``doc_id`` around ``chunk`` (a point id) as readable blocks, those within ``cited``
    (document char offsets; default: the chunk's own span) marked; ``None`` when the caller may read no such
    document or chunk — a forbidden document and a missing one look the same.

    Without ``chunk`` the view starts at the document's beginning, in version ``current_hash`` (the
    manifest's) when the store holds it."""
    scope = {"doc_id": [doc_id], **readable_scope(readable)}
    points = [(p.id, ChunkRecord.from_payload(p.payload)) for p in store.scroll(scope)]
    if not points:
        return None
    target = next((record for point_id, record in points if point_id == chunk), None) if chunk else None
    if chunk and target is None:
        return None
    version = target.doc_hash if target is not None else _version(points, current_hash)
    ordered = sorted(((pid, r) for pid, r in points if r.doc_hash == version), key=lambda item: item[1].chunk_index)
    if cited is None and target is not None:
        cited = (target.span.start, target.span.end)
    center = next((i for i, (pid, _) in enumerate(ordered) if pid == chunk), 0)
    if chunk is None and cited is not None:
        center = next((i for i, (_, r) in enumerate(ordered) if _overlaps(r.span.start, r.span.end, cited)), 0)
    around = max(0, min(around, MAX_AROUND))
    first, last = max(0, center - around), min(len(ordered), center + around + 1)
    head = target or ordered[0][1]
    return {
        "doc_id": head.doc_id,
        "title": head.title,
        "source": head.source,
        "path": head.path,
        "source_format": head.source_format,
        "doc_hash": version,
        "url": head.url,
        "chunk": chunk,
        "cited": {"start": cited[0], "end": cited[1]} if cited is not None else None,
        "chunks_total": len(ordered),
        "first_chunk": first,
        "last_chunk": last - 1,
        "sections": [_section(pid, record, cited, pid == chunk) for pid, record in ordered[first:last]],
    }


def _version(points: list[tuple[str, ChunkRecord]], current_hash: str) -> str:
    """The document version to show: the manifest's, else the one most chunks belong to (mid-reindex)."""
    hashes = Counter(record.doc_hash for _, record in points)
    return current_hash if current_hash in hashes else hashes.most_common(1)[0][0]


def _section(point_id: str, record: ChunkRecord, cited: tuple[int, int] | None, retrieved: bool) -> dict[str, Any]:
    span = record.span
    blocks = readable_blocks(record, cited)
    return {
        "node_id": point_id,
        "chunk_index": record.chunk_index,
        "header_path": list(record.header_path),
        "span": asdict(span),
        "url": record.url,
        "cited": cited is not None and _overlaps(span.start, span.end, cited),
        "retrieved": retrieved,  # the chunk search found; a citation's span may reach past it (small-to-big)
        "blocks": [asdict(block) for block in blocks],
    }


def readable_blocks(record: ChunkRecord, cited: tuple[int, int] | None = None) -> list[ViewBlock]:
    """A chunk's text as headings, paragraphs and code blocks (Markdown, reST, or extracted HTML/PDF text).

    A paragraph is a heading when it is a Markdown ``#`` line, a line with a reST/setext underline, or a
    line that equals a heading of the chunk's header path (extracted HTML, PDF and Word text). Offsets are
    document offsets (a chunk's text is ``document[span.start:span.end]``)."""
    text, base = record.text, record.span.start
    exact = record.span.end - record.span.start == len(text)  # nodes added from elsewhere may not say
    blocks = []
    for kind, local_start, local_end, level, shown in _split(text, record.header_path):
        start, end = (base + local_start, base + local_end) if exact else (record.span.start, record.span.end)
        hit = cited is not None and _overlaps(start, end, cited)
        blocks.append(ViewBlock(kind, shown, start, end, level, hit))
    return blocks


def _split(text: str, header_path: list[str]) -> Iterable[tuple[str, int, int, int, str]]:
    """(kind, start, end, level, text) of each block of ``text``, in order."""
    lines = _lines(text)
    i = 0
    while i < len(lines):
        start, line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j][1].lstrip().startswith(fence.group(1)):
                j += 1
            end = lines[min(j, len(lines) - 1)][0] + len(lines[min(j, len(lines) - 1)][1])
            body = "\n".join(body_line for _, body_line in lines[i + 1 : j])
            yield "code", start, end, 0, body
            i = j + 1
            continue
        atx = _ATX.match(line)
        if atx:
            title = atx.group(2).strip()
            yield "heading", start, start + len(line), _level(title, header_path, len(atx.group(1))), title
            i += 1
            continue
        j = i + 1  # a paragraph runs to a blank line, a heading line or a code fence
        while j < len(lines) and lines[j][1].strip() and not _opens_block(lines[j][1], j == i + 1):
            j += 1
        paragraph = lines[i:j]
        end = paragraph[-1][0] + len(paragraph[-1][1])
        yield from _paragraph(paragraph, start, end, header_path)
        i = j


def _paragraph(
    paragraph: list[tuple[int, str]], start: int, end: int, header_path: list[str]
) -> Iterable[tuple[str, int, int, int, str]]:
    texts = [line for _, line in paragraph]
    stripped = [line.strip() for line in texts]
    # reST: over- and underlined title; reST/setext: underlined title (the rule at least as long as the title).
    if len(texts) >= 3 and _UNDERLINE.match(texts[0]) and _UNDERLINE.match(texts[2]) and texts[0][0] == texts[2][0]:
        yield "heading", start, paragraph[2][0] + len(texts[2]), _level(stripped[1], header_path, 1), stripped[1]
        rest = paragraph[3:]
    elif len(texts) >= 2 and _UNDERLINE.match(texts[1]) and len(texts[1].strip()) >= len(stripped[0]) > 0:
        yield "heading", start, paragraph[1][0] + len(texts[1]), _level(stripped[0], header_path, 2), stripped[0]
        rest = paragraph[2:]
    elif len(texts) == 1 and stripped[0] in header_path:
        yield "heading", start, end, _level(stripped[0], header_path, 2), stripped[0]
        return
    else:
        rest = paragraph
    if rest:
        body = [line for _, line in rest]
        kind = "text"
        if all(line.lstrip().startswith(("|", "+")) for line in body):
            kind = "table"
        elif all(line.startswith(("   ", "\t")) for line in body):
            kind = "code"  # an indented block: reST literal or code-block body, Markdown indented code
        yield kind, rest[0][0], end, 0, "\n".join(body)


def _opens_block(line: str, second: bool) -> bool:
    """Whether ``line`` ends the paragraph above it: a ``#`` heading or a code fence — but a line of ``~``
    right under the first line is that line's reST underline."""
    return bool(_ATX.match(line) or (_FENCE.match(line) and not (second and _UNDERLINE.match(line))))


def _lines(text: str) -> list[tuple[int, str]]:
    """Each line of ``text`` with its offset (without its line break)."""
    out, offset = [], 0
    for line in text.splitlines(keepends=True):
        out.append((offset, line.rstrip("\r\n")))
        offset += len(line)
    return out


def _level(title: str, header_path: list[str], fallback: int) -> int:
    """A heading's level by its place in the chunk's header path (so every format nests alike)."""
    depth = header_path.index(title) + 1 if title in header_path else fallback
    return max(1, min(depth, 6))


def _overlaps(start: int, end: int, cited: tuple[int, int]) -> bool:
    if start == end:
        return cited[0] <= start < max(cited[1], cited[0] + 1)
    return start < cited[1] and cited[0] < end


# -- filter choices -----------------------------------------------------------------------------------
def facet_values(records: Iterable[ChunkRecord], fields: list[str]) -> list[dict[str, Any]]:
    """Per front-matter field, its distinct values among ``records`` and how many documents carry each.

    Lists (``tags: [a, b]``) count each item; values a filter cannot match exactly (floats, objects, null,
    blank strings) are left out, so every choice offered is a filter that works."""
    documents: dict[str, dict[tuple[str, Any], set[str]]] = {name: {} for name in fields}
    for record in records:
        for name in fields:
            for key in _scalars(_field(record.meta, name)):
                documents[name].setdefault(key, set()).add(record.doc_id)
    out = []
    for name in fields:
        values = sorted(documents[name].items(), key=lambda item: (item[0][0], str(item[0][1])))
        out.append(
            {
                "field": name,
                "values": [{"value": key[1], "documents": len(docs)} for key, docs in values[:MAX_FACET_VALUES]],
                "truncated": len(values) > MAX_FACET_VALUES,
            }
        )
    return out


def _field(meta: dict[str, Any], name: str) -> Any:
    value: Any = meta
    for part in name.removeprefix("meta.").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _scalars(value: Any) -> Iterable[tuple[str, Any]]:
    """(type name, value) keys: ``True`` and ``1`` are different filter values and must stay apart."""
    for item in value if isinstance(value, list) else [value]:
        storable = isinstance(item, bool) or (isinstance(item, int) and -_INT64 <= item < _INT64)  # as Qdrant
        if storable or (isinstance(item, str) and item.strip()):
            yield type(item).__name__, item
