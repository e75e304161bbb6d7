"""Applying a plan: files → parse workers → chunks → dense + BM25 vectors → store, in the journal's order.

    plan = plan_source(source, manifest, settings, sync=True)
    report = indexer.apply(plan)

Work is proportional to the change: unchanged documents are not read at all (size and mtime) or only
hashed; changed ones are re-chunked, and a chunk whose embedded text is already in the index (an unchanged
part of a changed, renamed or adopted document, or the same text elsewhere) reuses its stored vector —
the store is the embedding cache, keyed by the hash of the text the pinned embedder read.

Safety: a batch's new points are written and flushed, the manifest commit names them, and the old versions
are deleted, while the store's lock is held — a query in this process sees each document's old or new
version, never both or neither; after a crash the sweep (:mod:`kb.indexing.journal`) completes the job.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kb.chunking import Chunk
from kb.embedding import Embedder
from kb.errors import SourceError
from kb.indexing.journal import Journal
from kb.indexing.plan import IndexPlan, PlannedFile, entry_for, under_root
from kb.indexing.report import IngestReport, Progress
from kb.indexing.workers import ChunkOptions, ParsedFile, ParseJob, parse_guarded, parse_pool
from kb.loading import ParseOptions, SkippedFile
from kb.manifest import DocumentEntry, Manifest, point_id
from kb.records import ChunkRecord
from kb.settings import Settings
from kb.sources import DocumentSource
from kb.store.base import ChunkStore, StoredPoint
from kb.tokens import TokenCounter

EMBED_FLUSH_CHUNKS = 256


@dataclass
class _Pending:
    entry: DocumentEntry
    doc_id: str
    replaces: str | None  # manifest id of the version this one replaces (itself, or an adopted legacy id)
    points: list[StoredPoint]
    embed_texts: list[str]


class Indexer:
    """Writes documents into a store and keeps the manifest in step with it."""

    def __init__(
        self,
        store: ChunkStore,
        embedder: Embedder,
        counter: TokenCounter,
        manifest: Manifest,
        journal: Journal,
        settings: Settings,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.counter = counter
        self.manifest = manifest
        self.journal = journal
        self.settings = settings
        self.vector_cache: ChunkStore | None = None  # another store whose vectors may be reused

    def apply(self, plan: IndexPlan, progress: Progress | None = None) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport(
            unchanged=plan.unchanged, skipped=list(plan.skipped), ignored=dict(plan.ignored), sources=[plan.source.name]
        )
        report.timings["plan"] = plan.seconds
        deletes = [] if plan.refused_deletes else plan.deleted
        report.refused_deletes = plan.refused_deletes
        report.not_deleted = list(plan.deleted) if plan.refused_deletes else []
        todo = plan.writes
        if not (todo or deletes or plan.acl_changed or plan.real_changed):
            report.seconds = time.perf_counter() - started + plan.seconds
            return report
        self.store.ensure_payload_indexes(self.settings.indexed_fields)
        if todo:
            tick = time.perf_counter()
            self.embedder.load()  # once, outside the per-batch embed timing
            report.timings["load_model"] = time.perf_counter() - tick
        with self.journal.writing():
            if plan.acl_changed:
                self._set_acls(plan, report)
            if plan.real_changed:
                documents = self.manifest.snapshot()
                self.manifest.commit(put={d: replace(documents[d], real=r) for d, r in plan.real_changed.items()})
            if todo:
                self._write_all(plan, todo, report, progress)
            if deletes:
                self._delete(deletes, report)
        # A re-read document narrowed first (in case its new version failed) is reported once, as re-read.
        reread = {*report.changed, *report.refreshed}
        report.acl_changed = [d for d in report.acl_changed if d not in reread]
        # A new ACL is a payload update, and Qdrant moves an updated point out of its indexed segment into the
        # appendable one, where queries scan it: after a third of a 100k-chunk index changed ACL, hybrid queries
        # took 8 ms instead of 3.3-4 until something optimised (tests/test_acl.py).
        if report.chunks_written or report.deleted or report.acl_changed:
            tick = time.perf_counter()
            self.store.optimize()
            report.timings["store"] += time.perf_counter() - tick
        report.seconds = time.perf_counter() - started + plan.seconds
        return report

    # -- writing --------------------------------------------------------------------------------------
    def _write_all(self, plan: IndexPlan, todo: list[str], report: IngestReport, progress: Progress | None) -> None:
        source = plan.source
        options = ParseOptions.from_settings(self.settings, source.asciidoc_patterns or None)
        chunking = ChunkOptions(
            str(self.embedder.model_path), self.settings.chunk_max_tokens, self.settings.chunk_min_tokens
        )
        jobs = [
            ParseJob(
                doc_id,
                str(plan.files[doc_id].path),
                str(source.folder),
                options,
                chunking,
                self.settings.max_file_seconds,
            )
            for doc_id in todo
        ]
        outcome_of = {doc_id: kind for kind, ids in (("added", plan.added), ("changed", plan.changed),
                      ("refreshed", plan.refreshed), ("adopted", list(plan.adopted))) for doc_id in ids}  # fmt: skip
        batch: list[_Pending] = []
        tick = time.perf_counter()
        for done, (job, outcome) in enumerate(self._parse(jobs), start=1):
            report.timings["parse"] += time.perf_counter() - tick
            if isinstance(outcome, SourceError):
                report.skipped.append(
                    SkippedFile(
                        job.doc_id, str(outcome), getattr(outcome, "failure", ""), getattr(outcome, "content_hash", "")
                    )
                )
            else:
                batch.append(self._prepare(plan, outcome))
                getattr(report, outcome_of[job.doc_id]).append(job.doc_id)
                if sum(len(p.points) for p in batch) >= EMBED_FLUSH_CHUNKS:
                    self._write(batch, report)
                    batch = []
            if progress:
                progress(done, len(jobs), job.doc_id)
            tick = time.perf_counter()
        self._write(batch, report)

    def _parse(self, jobs: list[ParseJob]) -> Any:
        if self.settings.parse_workers == 0 or not jobs:
            # In-process: the chunker honours the time limit, but a parser stuck in native code is not stopped.
            return ((job, parse_guarded(job)) for job in jobs)
        return parse_pool(self.settings.parse_workers, self.settings.parse_memory_mb).run(jobs)

    def _prepare(self, plan: IndexPlan, parsed: ParsedFile) -> _Pending:
        source, planned = plan.source, plan.files[parsed.doc_id]
        read_at = _read_at(parsed, source, planned)
        groups = plan.policy.resolve(planned.relative, parsed.own_acl, also=read_at)
        meta = {**source.metadata, **parsed.metadata}
        points, texts = [], []
        for chunk in parsed.chunks:
            embed_text = embedding_text(parsed.title, chunk, self.embedder.max_tokens, self.counter)
            record = ChunkRecord(
                text=chunk.text,
                doc_id=parsed.doc_id,
                source=source.name,
                path=planned.relative,
                doc_hash=parsed.content_hash,
                chunk_index=chunk.index,
                title=parsed.title,
                header_path=chunk.header_path,
                span=chunk.span,
                anchor=chunk.anchor,
                source_format=parsed.source_format.value,
                url=str(meta.get("url", "") or ""),
                meta=meta,
                text_hash=text_hash(embed_text),
                acl=groups,
            )
            record = replace(record, url=source.url_for(record))
            points.append(
                StoredPoint(
                    point_id(parsed.doc_id, parsed.content_hash, chunk.index),
                    [],
                    self.store.bm25_document(record),
                    record.to_payload(),
                )
            )
            texts.append(embed_text)
        entry = entry_for(
            source,
            planned.relative,
            None,
            doc_hash=parsed.content_hash,
            chunks=len(points),
            mtime=parsed.mtime,
            size=parsed.size,
            source_format=parsed.source_format.value,
            title=parsed.title,
            acl=groups,
            own_acl=parsed.own_acl,
            real=next((r for r in read_at if r != planned.relative), ""),
        )
        return _Pending(entry, parsed.doc_id, planned.replaces, points, texts)

    def _write(self, batch: list[_Pending], report: IngestReport) -> None:
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
        documents = self.manifest.snapshot()
        old_versions: list[tuple[str, str]] = []
        for pending in batch:
            old = documents.get(pending.replaces or "")
            if old is not None and (old.doc_hash != pending.entry.doc_hash or pending.replaces != pending.doc_id):
                old_versions.append((pending.replaces or "", old.doc_hash))
        with self.store.transaction():  # queries in this process wait: they see old or new, never both
            self.store.upsert(flat)
            self.store.flush()  # durable before the manifest names them
            self.manifest.commit(
                put={p.doc_id: p.entry for p in batch},
                delete=[p.replaces for p in batch if p.replaces and p.replaces != p.doc_id],
            )
            for doc_id, old_hash in old_versions:
                self.store.delete_version(doc_id, old_hash)
        report.chunks_written += len(flat)
        report.timings["store"] += time.perf_counter() - tick

    def _set_acls(self, plan: IndexPlan, report: IngestReport) -> None:
        """ACL-only changes: payload updates of the stored chunks, no parsing or embedding."""
        tick = time.perf_counter()
        documents = self.manifest.snapshot()
        with self.store.transaction():
            for doc_id, groups in plan.acl_changed.items():
                self.store.set_acl(doc_id, groups)
            self.store.flush()
            self.manifest.commit(put={d: replace(documents[d], acl=g) for d, g in plan.acl_changed.items()})
        report.acl_changed.extend(plan.acl_changed)
        report.timings["store"] += time.perf_counter() - tick

    def _delete(self, doc_ids: list[str], report: IngestReport) -> None:
        tick = time.perf_counter()
        with self.store.transaction():
            self.manifest.commit(delete=doc_ids)  # durable first: a crash leaves orphans for the sweep
            self.store.delete_documents(doc_ids)
        report.deleted.extend(doc_ids)
        report.timings["store"] += time.perf_counter() - tick


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def embedding_text(title: str, chunk: Chunk, max_tokens: int, counter: TokenCounter) -> str:
    """What the embedder reads for ``chunk``: title and heading path as context, then the chunk, within the
    embedder's ``max_tokens`` (the context is cut, never the chunk)."""
    context = " > ".join([title, *[h for h in chunk.header_path if h != title]])
    room = max_tokens - chunk.tokens - 1
    context = counter.truncate(context, room) if room > 0 else ""
    return f"{context}\n{chunk.text}" if context else chunk.text


def _read_at(parsed: ParsedFile, source: DocumentSource, planned: PlannedFile) -> tuple[str, ...]:
    """The real path the worker read, under the source root (a link swapped since the plan: its new target's
    rules apply); outside the root, or unknown, the plan's."""
    read = under_root(Path(parsed.real), f"{source.folder.resolve()}{os.sep}") if parsed.real else ""
    return tuple(path for path in (read or planned.real,) if path)
