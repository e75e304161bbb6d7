"""Ingest: source folder → documents → chunks → dense + BM25 vectors → store, with a report.

Documents whose content hash is already in the manifest are not parsed again. Chunks are embedded in
batches across documents; a document's new chunks are written before its old ones are deleted, and the
manifest is saved after every batch, so an interrupted ingest resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.chunking import Chunk, HeadingChunker
from kb.embedding import SentenceTransformerEmbedder
from kb.errors import SourceError
from kb.loading import SkippedFile, SourceDocument, discover, parse_file, read_file
from kb.manifest import DocumentEntry, Manifest, point_id
from kb.settings import Settings
from kb.store.base import ChunkStore, StoredPoint
from kb.tokens import TokenCounter

Progress = Callable[[int, int, str], None]
"""Called as ``progress(files_done, files_total, doc_id)``."""

EMBED_FLUSH_CHUNKS = 256


@dataclass
class IngestReport:
    """What an ingest did: counts per outcome, skipped files with reasons, seconds per stage."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks_written: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    timings: dict[str, float] = field(
        default_factory=lambda: {"load_model": 0.0, "read": 0.0, "parse": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0}
    )
    seconds: float = 0.0

    @property
    def documents(self) -> int:
        return len(self.added) + len(self.changed) + self.unchanged

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "added": len(self.added),
            "changed": len(self.changed),
            "unchanged": self.unchanged,
            "chunks_written": self.chunks_written,
            "skipped": [{"doc_id": s.doc_id, "reason": s.reason} for s in self.skipped],
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _PendingDoc:
    document: SourceDocument
    chunks: list[Chunk]
    points: list[StoredPoint]


class Indexer:
    """Writes documents into a store and keeps the manifest in step with it."""

    def __init__(
        self,
        store: ChunkStore,
        embedder: SentenceTransformerEmbedder,
        chunker: HeadingChunker,
        counter: TokenCounter,
        manifest: Manifest,
        index_dir: Path,
        settings: Settings,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.counter = counter
        self.manifest = manifest
        self.index_dir = index_dir
        self.settings = settings

    def ingest(
        self, folder: str | Path, metadata: dict[str, Any] | None = None, progress: Progress | None = None
    ) -> IngestReport:
        """Add or update every document under ``folder``; ``metadata`` is merged into each document's."""
        root = Path(folder)
        if not root.is_dir():
            raise SourceError(f"{folder}: not a folder; pass the folder that holds the documents")
        started = time.perf_counter()
        report = IngestReport()
        files = list(discover(root, self.settings))
        tick = time.perf_counter()
        _ = self.embedder.model  # load once, outside the per-batch embed timing
        report.timings["load_model"] = time.perf_counter() - tick
        self.store.ensure_payload_indexes(self.settings.indexed_fields)
        batch: list[_PendingDoc] = []
        for done, (doc_id, path) in enumerate(files, start=1):
            pending = self._prepare(root, doc_id, path, metadata or {}, report)
            if pending is not None:
                batch.append(pending)
                if sum(len(p.points) for p in batch) >= EMBED_FLUSH_CHUNKS:
                    self._write(batch, report)
                    batch = []
            if progress:
                progress(done, len(files), doc_id)
        self._write(batch, report)
        if report.chunks_written:
            tick = time.perf_counter()
            self.store.optimize()
            report.timings["store"] += time.perf_counter() - tick
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(
        self, root: Path, doc_id: str, path: Path, extra: dict[str, Any], report: IngestReport
    ) -> _PendingDoc | None:
        tick = time.perf_counter()
        try:
            raw = read_file(path, self.settings, root)
        except SourceError as exc:
            report.skipped.append(SkippedFile(doc_id, str(exc)))
            return None
        report.timings["read"] += time.perf_counter() - tick
        known = self.manifest.documents.get(doc_id)
        if known is not None and known.doc_hash == raw.content_hash:
            report.unchanged += 1
            return None
        tick = time.perf_counter()
        try:
            document = parse_file(raw, doc_id)
        except SourceError as exc:
            report.skipped.append(SkippedFile(doc_id, str(exc)))
            return None
        document.parsed.metadata = {**document.parsed.metadata, **extra}
        report.timings["parse"] += time.perf_counter() - tick
        tick = time.perf_counter()
        chunks = self.chunker.chunk(document.parsed)
        report.timings["chunk"] += time.perf_counter() - tick
        points = [
            StoredPoint(
                point_id(doc_id, document.content_hash, c.index), [], self.store.bm25_document(payload), payload
            )
            for c in chunks
            for payload in [self._payload(document, c)]
        ]
        return _PendingDoc(document, chunks, points)

    def _payload(self, document: SourceDocument, chunk: Chunk) -> dict[str, Any]:
        meta = document.metadata
        return {
            "text": chunk.text,
            "doc_id": document.doc_id,
            "doc_hash": document.content_hash,
            "chunk_index": chunk.index,
            "title": document.title,
            "header_path": chunk.header_path,
            "span": chunk.span.as_list(),
            "source_format": document.source_format.value,
            "url": str(meta.get("url", "")),
            "meta": meta,
        }

    def embed_text(self, title: str, chunk: Chunk) -> str:
        """What the embedder reads: title and heading path as context, then the chunk, within its limit."""
        context = " > ".join([title, *[h for h in chunk.header_path if h != title]])
        room = self.embedder.max_tokens - chunk.tokens - 1
        context = self.counter.truncate(context, room) if room > 0 else ""
        return f"{context}\n{chunk.text}" if context else chunk.text

    def _write(self, batch: list[_PendingDoc], report: IngestReport) -> None:
        if not batch:
            return
        tick = time.perf_counter()
        texts = [self.embed_text(p.document.title, c) for p in batch for c in p.chunks]
        vectors = self.embedder.embed(texts) if texts else []
        report.timings["embed"] += time.perf_counter() - tick
        tick = time.perf_counter()
        flat = [point for p in batch for point in p.points]
        for point, vector in zip(flat, vectors, strict=True):
            point.dense = vector
        self.store.upsert(flat)
        for pending in batch:
            doc = pending.document
            old = self.manifest.documents.get(doc.doc_id)
            # New version first, then the old one goes: the document is never missing from the index.
            if old is not None and old.doc_hash != doc.content_hash:
                self.store.delete_points(old.point_ids(doc.doc_id))
            (report.changed if old is not None else report.added).append(doc.doc_id)
            self.manifest.documents[doc.doc_id] = DocumentEntry(
                doc.content_hash, len(pending.chunks), doc.mtime, doc.size, doc.source_format.value, doc.title
            )
        self.manifest.write(self.index_dir)
        report.chunks_written += len(flat)
        report.timings["store"] += time.perf_counter() - tick
