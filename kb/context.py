"""Small-to-big: retrieve small chunks, hand the generator the passages around them.

    sources = expand(store, sources, counter, budget=900)

A retrieved chunk is often one paragraph of the section that answers; the generator needs the rest of it.
Each source grows by the neighbouring chunks of its own section (same document version, nearest first) while
the whole context stays within ``budget`` tokens (the best-ranked sources grow first). Sources that meet in one
document become one source, so nothing is shown twice. A grown source's span is the passage it now shows, so
its citation points at what the generator read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from kb.citations import Source
from kb.document import Span
from kb.records import ChunkRecord
from kb.store.base import ChunkStore
from kb.tokens import TokenCounter

NEIGHBOURS = 2  # chunks considered on each side of a retrieved one


@dataclass
class _Passage:
    source: Source
    doc_hash: str
    first: int  # chunk indices it covers (inclusive)
    last: int
    chunks: dict[int, ChunkRecord]
    tokens: int


def expand(
    store: ChunkStore, sources: Sequence[Source], counter: TokenCounter, budget: int, records: Sequence[ChunkRecord]
) -> list[Source]:
    """``sources`` grown to their neighbouring chunks within ``budget`` tokens, merged per document, renumbered.

    ``records`` are the sources' own chunk records (same order), which name their document version and index."""
    if budget <= 0 or not sources:
        return list(sources)
    passages: list[_Passage] = []
    for source, record in zip(sources, records, strict=True):
        same = next((p for p in passages if p.source.doc_id == source.doc_id and p.doc_hash == record.doc_hash), None)
        if same is not None and same.first - 1 <= record.chunk_index <= same.last + 1:
            _absorb(same, record, counter)  # adjacent to a better-ranked source: one passage
            continue
        passages.append(_Passage(source, record.doc_hash, record.chunk_index, record.chunk_index,
                                 {record.chunk_index: record}, counter.count([record.text])[0]))  # fmt: skip
    used = sum(p.tokens for p in passages)
    for passage in passages:  # best-ranked first
        neighbours = _neighbours(store, passage)
        for index in _growth_order(passage, neighbours):
            cost = counter.count([neighbours[index].text])[0]
            if used + cost > budget:
                continue
            _absorb(passage, neighbours[index], counter, cost)
            used += cost
    merged = _merge_touching(passages, counter)
    return [_as_source(p, number) for number, p in enumerate(merged, start=1)]


def _neighbours(store: ChunkStore, passage: _Passage) -> dict[int, ChunkRecord]:
    around = range(max(0, passage.first - NEIGHBOURS), passage.last + NEIGHBOURS + 1)
    wanted = [i for i in around if i not in passage.chunks]
    if not wanted:
        return {}
    conditions = {"doc_id": [passage.source.doc_id], "doc_hash": [passage.doc_hash], "chunk_index": wanted}
    records = [ChunkRecord.from_payload(hit.payload) for hit in store.scroll(conditions)]
    return {r.chunk_index: r for r in records}


def _growth_order(passage: _Passage, neighbours: dict[int, ChunkRecord]) -> list[int]:
    """Neighbours inside the passage's own section (or its subsections), nearest first: another section's
    text is another topic, and the generator reads it as evidence."""
    heading = next(iter(passage.chunks.values())).header_path
    order = []
    for distance in range(1, NEIGHBOURS + 1):
        for index in (passage.first - distance, passage.last + distance):
            if index in neighbours and neighbours[index].header_path[: len(heading)] == heading:
                order.append(index)
    return order


def _absorb(passage: _Passage, record: ChunkRecord, counter: TokenCounter, tokens: int | None = None) -> None:
    if record.chunk_index in passage.chunks:
        return
    if not (passage.first - 1 <= record.chunk_index <= passage.last + 1):
        return  # only contiguous passages: a gap would splice unrelated text
    passage.chunks[record.chunk_index] = record
    passage.first, passage.last = min(passage.first, record.chunk_index), max(passage.last, record.chunk_index)
    passage.tokens += counter.count([record.text])[0] if tokens is None else tokens


def _merge_touching(passages: list[_Passage], counter: TokenCounter) -> list[_Passage]:
    out: list[_Passage] = []
    for passage in passages:
        host = next(
            (p for p in out if p.source.doc_id == passage.source.doc_id and p.doc_hash == passage.doc_hash
             and p.first - 1 <= passage.last and passage.first <= p.last + 1),
            None,
        )  # fmt: skip
        if host is None:
            out.append(passage)
            continue
        for record in sorted(passage.chunks.values(), key=lambda r: r.chunk_index):
            host.chunks.setdefault(record.chunk_index, record)
        host.first, host.last = min(host.first, passage.first), max(host.last, passage.last)
    return out


def _as_source(passage: _Passage, number: int) -> Source:
    ordered = [passage.chunks[i] for i in sorted(passage.chunks)]
    first, last = ordered[0].span, ordered[-1].span
    pages = (first.page_start, last.page_end or last.page_start)
    span = Span(first.start, last.end, first.line_start, last.line_end, *pages)
    return replace(passage.source, number=number, text="\n\n".join(r.text for r in ordered), span=span)
