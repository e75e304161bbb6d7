"""Ingest and reindex: source folder → plan of changes → chunks → dense + BM25 vectors → store.

    plan = indexer.plan("docs/", sync=True)      # content hashes against the manifest: nothing is written
    print(plan.summary())                         # "3 added, 2 changed, 1 deleted, 412 unchanged"
    report = indexer.apply(plan)

Work is proportional to the change: unchanged documents are only read and hashed; changed ones are
re-chunked, and a chunk whose embedded text is already in the index (an unchanged part of a changed or
renamed document, or the same text in another document) reuses its stored vector instead of being
embedded again — the store is the embedding cache, keyed by the hash of the text the pinned embedder read.

Safety: a document's new version is written, the manifest switched, and the old version deleted while the
store's lock is held, so a query in this process sees the old or the new version, never both or neither.
The manifest is the truth: while writes are in flight a ``DIRTY`` marker exists, and on the next open
:func:`sweep` deletes every (document, hash) version the manifest does not name — after a crash at any
point, each document is in its old or its new version, and the next reindex finishes the job.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kb.acl import AclResolver, front_matter_acl
from kb.chunking import Chunk, ChunkingTimeout, HeadingChunker
from kb.embedding import SentenceTransformerEmbedder
from kb.errors import SourceError
from kb.loading import RawFile, SkippedFile, SourceDocument, discover, parse_file, read_file
from kb.manifest import DocumentEntry, Manifest, point_id
from kb.settings import Settings
from kb.store.base import ACL_FIELD, ChunkStore, StoredPoint
from kb.tokens import TokenCounter

Progress = Callable[[int, int, str], None]
"""Called as ``progress(done, total, doc_id)``."""

EMBED_FLUSH_CHUNKS = 256
DIRTY_FILE = "DIRTY"
_T = TypeVar("_T")


@dataclass
class IndexPlan:
    """What a reindex would do. ``files`` keeps what was read, so applying the plan does not read twice."""

    root: Path
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    acl_changed: dict[str, list[str]] = field(default_factory=dict)  # unchanged content, new groups
    files: dict[str, RawFile] = field(default_factory=dict, repr=False)
    acl: AclResolver = field(default_factory=AclResolver, repr=False)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged"
            + (f", {len(self.acl_changed)} ACL changed" if self.acl_changed else "")
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
        )


@dataclass
class IngestReport:
    """What an ingest or reindex did: documents per outcome, chunks, skipped files, seconds per stage."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    acl_changed: list[str] = field(default_factory=list)
    chunks_written: int = 0
    chunks_reused: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    timings: dict[str, float] = field(
        default_factory=lambda: {"plan": 0.0, "load_model": 0.0, "parse": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0}
    )
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def documents(self) -> int:
        return len(self.added) + len(self.changed) + self.unchanged

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged" + (f" ({len(self.acl_changed)} with a new ACL)" if self.acl_changed else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "added": len(self.added),
            "changed": len(self.changed),
            "deleted": len(self.deleted),
            "unchanged": self.unchanged,
            "acl_changed": len(self.acl_changed),
            "chunks_written": self.chunks_written,
            "chunks_reused": self.chunks_reused,
            "skipped": [{"doc_id": s.doc_id, "reason": s.reason} for s in self.skipped],
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


@dataclass
class _PendingDoc:
    document: SourceDocument
    chunks: list[Chunk]
    points: list[StoredPoint]
    embed_texts: list[str]
    acl: list[str]
    own_acl: list[str] | None


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
        self.vector_cache: ChunkStore | None = None  # another store whose vectors may be reused

    # -- planning -------------------------------------------------------------------------------------
    def plan(self, folder: str | Path, sync: bool, acl: list[str] | None = None) -> IndexPlan:
        """Compare ``folder`` with the manifest by content hash. With ``sync``, documents that are no
        longer in the folder are planned for deletion (reindex); without, the ingest only adds."""
        root = Path(folder)
        if not root.is_dir():
            raise SourceError(f"{folder}: not a folder; pass the folder that holds the documents")
        started = time.perf_counter()
        plan = IndexPlan(root, acl=AclResolver.for_folder(root, self.settings.acl_default, acl))
        present: set[str] = set()
        for doc_id, path in discover(root, self.settings):
            try:
                raw = read_file(path, self.settings, root)
            except SourceError as exc:
                plan.skipped.append(SkippedFile(doc_id, str(exc)))
                continue
            present.add(doc_id)
            known = self.manifest.documents.get(doc_id)
            if known is not None and known.doc_hash == raw.content_hash:
                plan.unchanged += 1
                groups = plan.acl.resolve(doc_id, known.own_acl)
                if groups != known.acl:
                    plan.acl_changed[doc_id] = groups
                continue
            (plan.changed if known is not None else plan.added).append(doc_id)
            plan.files[doc_id] = raw
        if sync:
            # A file that is still there but now unreadable keeps its indexed version (nothing is lost).
            kept = present | {s.doc_id for s in plan.skipped}
            plan.deleted = sorted(set(self.manifest.documents) - kept)
        plan.seconds = time.perf_counter() - started
        return plan

    # -- applying -------------------------------------------------------------------------------------
    def ingest(
        self,
        folder: str | Path,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        acl: list[str] | None = None,
    ) -> IngestReport:
        """Add new and changed documents under ``folder``; documents elsewhere in the index are kept."""
        return self.apply(self.plan(folder, sync=False, acl=acl), metadata, progress)

    def apply(
        self, plan: IndexPlan, metadata: dict[str, Any] | None = None, progress: Progress | None = None
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport(unchanged=plan.unchanged, skipped=list(plan.skipped))
        report.timings["plan"] = plan.seconds
        todo = plan.added + plan.changed
        if plan.acl_changed:
            self.store.ensure_payload_indexes(self.settings.indexed_fields)
            self._set_acls(plan.acl_changed, report)
        if not todo and not plan.deleted:
            report.seconds = time.perf_counter() - started + plan.seconds
            return report
        self.store.ensure_payload_indexes(self.settings.indexed_fields)
        if todo:
            tick = time.perf_counter()
            _ = self.embedder.model  # load once, outside the per-batch embed timing
            report.timings["load_model"] = time.perf_counter() - tick
        with self.writing():
            batch: list[_PendingDoc] = []
            for done, doc_id in enumerate(todo, start=1):
                pending = self._prepare(plan.files[doc_id], doc_id, metadata or {}, plan.acl, report)
                if pending is not None:
                    batch.append(pending)
                    if sum(len(p.points) for p in batch) >= EMBED_FLUSH_CHUNKS:
                        self._write(batch, report)
                        batch = []
                if progress:
                    progress(done, len(todo), doc_id)
            self._write(batch, report)
            if plan.deleted:
                self._delete(plan.deleted, report)
        if report.chunks_written or report.deleted:
            tick = time.perf_counter()
            self.store.optimize()
            report.timings["store"] += time.perf_counter() - tick
        report.seconds = time.perf_counter() - started + plan.seconds
        return report

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Mark the index dirty while writes are in flight (a crash leaves the marker for :func:`sweep`)."""
        marker = self.index_dir / DIRTY_FILE
        marker.write_text(str(time.time()))
        yield  # an exception propagates from here and leaves the marker for the sweep on the next open
        self.store.flush()
        marker.unlink(missing_ok=True)

    def _prepare(
        self, raw: RawFile, doc_id: str, extra: dict[str, Any], acl: AclResolver, report: IngestReport
    ) -> _PendingDoc | None:
        tick = time.perf_counter()
        limit = self.settings.max_file_seconds
        try:
            document, own_acl, chunks = run_limited(lambda: self._parse_and_chunk(raw, doc_id, limit), limit)
        except SourceError as exc:
            report.skipped.append(SkippedFile(doc_id, str(exc)))
            return None
        except TimeoutError:
            report.skipped.append(
                SkippedFile(
                    doc_id,
                    f"parsing and chunking took over max_file_seconds={limit:g}; split the file or raise the setting",
                )
            )
            return None
        extra = {k: v for k, v in extra.items() if k != ACL_FIELD}
        document.parsed.metadata = {**document.parsed.metadata, **extra}
        report.timings["parse"] += time.perf_counter() - tick
        tick = time.perf_counter()
        embed_texts = [self.embed_text(document.title, c) for c in chunks]
        points = []
        for chunk, text in zip(chunks, embed_texts, strict=True):
            payload = self._payload(document, chunk, text)
            points.append(
                StoredPoint(
                    point_id(doc_id, document.content_hash, chunk.index), [], self.store.bm25_document(payload), payload
                )
            )
        groups = acl.resolve(doc_id, own_acl)
        for point in points:
            point.payload[ACL_FIELD] = groups
        report.timings["chunk"] += time.perf_counter() - tick
        return _PendingDoc(document, chunks, points, embed_texts, groups, own_acl)

    def _parse_and_chunk(
        self, raw: RawFile, doc_id: str, limit: float
    ) -> tuple[SourceDocument, list[str] | None, list[Chunk]]:
        deadline = time.monotonic() + limit
        document = parse_file(raw, doc_id)
        own_acl = front_matter_acl(document.parsed.metadata, doc_id)
        document.parsed.metadata = {k: v for k, v in document.parsed.metadata.items() if k != ACL_FIELD}
        try:
            chunks = self.chunker.chunk(document.parsed, deadline)
        except ChunkingTimeout as exc:
            raise TimeoutError from exc
        except RecursionError as exc:
            raise SourceError("structure nested too deeply to chunk") from exc
        return document, own_acl, chunks

    def _payload(self, document: SourceDocument, chunk: Chunk, embed_text: str) -> dict[str, Any]:
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
            "text_hash": text_hash(embed_text),
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
        flat = [point for p in batch for point in p.points]
        texts = [t for p in batch for t in p.embed_texts]
        hashes = list({p.payload["text_hash"] for p in flat})
        cached = (self.vector_cache or self.store).vectors_by_text_hash(hashes)
        missing: dict[str, str] = {}  # text hash -> text, each embedded once even if repeated in the batch
        for point, text in zip(flat, texts, strict=True):
            if point.payload["text_hash"] not in cached:
                missing.setdefault(point.payload["text_hash"], text)
        fresh = self.embedder.embed(list(missing.values())) if missing else []
        cached.update(zip(missing, fresh, strict=True))
        for point in flat:
            point.dense = cached[point.payload["text_hash"]]
        report.chunks_reused += len(flat) - len(missing)
        report.timings["embed"] += time.perf_counter() - tick
        tick = time.perf_counter()
        with self.store.transaction():  # queries in this process wait: they see old or new, never both
            self.store.upsert(flat)
            replaced: list[tuple[str, str]] = []
            for pending in batch:
                doc = pending.document
                old = self.manifest.documents.get(doc.doc_id)
                if old is not None and old.doc_hash != doc.content_hash:
                    replaced.append((doc.doc_id, old.doc_hash))
                (report.changed if old is not None else report.added).append(doc.doc_id)
                self.manifest.documents[doc.doc_id] = DocumentEntry(
                    doc.content_hash,
                    len(pending.chunks),
                    doc.mtime,
                    doc.size,
                    doc.source_format.value,
                    doc.title,
                    pending.acl,
                    pending.own_acl,
                )
            self.manifest.write(self.store)
            for doc_id, old_hash in replaced:
                self.store.delete_version(doc_id, old_hash)
        report.chunks_written += len(flat)
        report.timings["store"] += time.perf_counter() - tick

    def _set_acls(self, changes: dict[str, list[str]], report: IngestReport) -> None:
        """Apply ACL-only changes: payload updates of the stored chunks, no parsing or embedding."""
        tick = time.perf_counter()
        with self.writing(), self.store.transaction():
            for doc_id, groups in changes.items():
                self.store.set_acl(doc_id, groups)
                self.manifest.documents[doc_id].acl = groups
            self.manifest.write(self.store)
        report.acl_changed.extend(changes)
        report.timings["store"] += time.perf_counter() - tick

    def _delete(self, doc_ids: list[str], report: IngestReport) -> None:
        tick = time.perf_counter()
        with self.store.transaction():
            for doc_id in doc_ids:
                self.manifest.documents.pop(doc_id, None)
            self.manifest.write(self.store)
            self.store.delete_documents(doc_ids)
        report.deleted.extend(doc_ids)
        report.timings["store"] += time.perf_counter() - tick


def run_limited(work: Callable[[], _T], seconds: float) -> _T:
    """``work()`` in a helper thread, or TimeoutError after ``seconds``.

    A thread cannot be killed: the chunker also checks the same deadline and stops itself soon after,
    so an abandoned file costs at most one tokenizer call more."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="kb-parse", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def sweep(store: ChunkStore, manifest: Manifest) -> int:
    """Delete every stored (document, hash) version the manifest does not name; returns points deleted.

    Also drops manifest entries whose points are missing or incomplete, so the next reindex re-adds them.
    """
    versions = store.versions()
    deleted = 0
    for (doc_id, doc_hash), count in versions.items():
        entry = manifest.documents.get(doc_id)
        if entry is None or entry.doc_hash != doc_hash:
            store.delete_version(doc_id, doc_hash)
            deleted += count
    for doc_id, entry in list(manifest.documents.items()):
        if versions.get((doc_id, entry.doc_hash), 0) != entry.chunks:
            store.delete_version(doc_id, entry.doc_hash)
            del manifest.documents[doc_id]
    return deleted
