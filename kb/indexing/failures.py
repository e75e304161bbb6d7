"""Files that failed to parse, remembered so that an unchanged one is not parsed again on every reindex.

    failures = ParseFailures.load(store, settings)
    plan = plan_source(source, manifest, settings, sync=True, failures=failures)   # remembered ones: skipped
    failures.record(plan, report)                                                  # after the plan is applied

A broken file never enters the manifest, so without a memory every reindex would plan it as new and parse it
again: a folder holding one stuck PDF paid ``max_file_seconds`` (60 s by default) on each reindex, and the
torture folder's 27 bad files 10 s, with nothing changed. What is remembered, per source:

- a file the parser or chunker rejected (:class:`~kb.indexing.workers.ParseFailure`), under the hash of the
  bytes the worker read — and only when those are the bytes the plan hashed (a file rewritten mid-reindex is
  not remembered);
- a file stopped by a limit or a crash (:class:`~kb.indexing.workers.LimitFailure`: time, memory, a signal),
  only after it failed that way twice in a row on the same bytes: once may be a loaded machine.

Read errors (permissions, a vanished file) are never remembered. While the bytes and the conditions (kb's
version, the parse limits, the chunking, the source's AsciiDoc patterns, the parser libraries) are the same,
the plan reports the file skipped with its reason, unparsed; anything else, or ``verify`` (``kb reindex
--verify``, ``POST /reindex {"verify": true}``), parses it again. The memory is a cache kept as a store state
document: if it cannot be read or written, reindexing goes on without it (one parse per broken file more),
never a document lost.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from kb.loading import ParseOptions, SkippedFile
from kb.settings import Settings

if TYPE_CHECKING:
    from kb.indexing.plan import IndexPlan
    from kb.indexing.report import IngestReport
    from kb.sources import DocumentSource
    from kb.store.base import ChunkStore

STATE = "parse_failures"
REMEMBERED = " (unchanged since it failed; `kb reindex --verify` parses it again)"
LIMIT_STRIKES = 2  # a file stopped by a limit is remembered after failing this many times in a row
_LOG = logging.getLogger(__name__)
_WRITE_LOCK = threading.Lock()  # sources reindexed in parallel share one state document


def conditions(settings: Settings, source: DocumentSource) -> str:
    """What a parse outcome depends on besides the file's bytes."""
    from kb import __version__

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return ""

    limits = ParseOptions.from_settings(settings, source.asciidoc_patterns or None)
    return json.dumps(
        {
            "kb": __version__,
            "parse": [limits.max_file_bytes, limits.max_pdf_pages, list(limits.asciidoc_patterns)],
            "max_file_seconds": settings.max_file_seconds,
            "parse_memory_mb": settings.parse_memory_mb,
            "parse_workers": settings.parse_workers,
            "chunking": settings.chunking_identity(),
            "parsers": [version("pypdfium2"), version("python-docx")],
        },
        sort_keys=True,
        default=str,
    )


@dataclass
class ParseFailures:
    """Per source: its conditions, and document id → the bytes that failed and why (module docstring)."""

    store: ChunkStore
    settings: Settings
    sources: dict[str, Any]
    # conditions() costs ~2 ms (package metadata): once per source, not once per planned file
    _conditions: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, store: ChunkStore, settings: Settings) -> ParseFailures:
        return cls(store, settings, _read(store))

    def known(self, source: DocumentSource, doc_id: str, content_hash: str) -> SkippedFile | None:
        """The skip to report for this version of the file, when it already failed under these conditions."""
        if source.name not in self.sources:
            return None
        entry = self._files(self.sources, source).get(doc_id)
        if not isinstance(entry, dict) or entry.get("hash") != content_hash or not entry.get("final"):
            return None
        return SkippedFile(doc_id, str(entry.get("reason", "failed to parse")) + REMEMBERED)

    def record(self, plan: IndexPlan, report: IngestReport) -> None:
        """Remember this run's parse failures of ``plan.source``; forget files now indexed, changed or gone."""
        try:
            with _WRITE_LOCK:
                current = _read(self.store)  # another source's run may have written since load()
                before = self._files(current, plan.source)
                after = self._next(plan, report, before)
                if after == before:
                    return
                if after:
                    current[plan.source.name] = {"conditions": self._conditions_of(plan.source), "files": after}
                else:
                    current.pop(plan.source.name, None)
                self.store.write_state(STATE, {"sources": current})
                self.sources = current
        except Exception as exc:  # a cache: the reindex it follows has succeeded and must still report so
            _LOG.warning("could not remember parse failures of source %r: %s", plan.source.name, exc)

    def forget(self, source: str) -> None:
        """Drop a removed or renamed source's entries."""
        with _WRITE_LOCK:
            current = _read(self.store)
            if current.pop(source, None) is not None:
                try:
                    self.store.write_state(STATE, {"sources": current})
                except Exception as exc:
                    _LOG.warning("could not forget parse failures of source %r: %s", source, exc)

    def _conditions_of(self, source: DocumentSource) -> str:
        if source.name not in self._conditions:
            self._conditions[source.name] = conditions(self.settings, source)
        return self._conditions[source.name]

    def _files(self, sources: dict[str, Any], source: DocumentSource) -> dict[str, Any]:
        entry = sources.get(source.name)
        if not isinstance(entry, dict) or entry.get("conditions") != self._conditions_of(source):
            return {}
        files = entry.get("files")
        return files if isinstance(files, dict) else {}

    @staticmethod
    def _next(plan: IndexPlan, report: IngestReport, before: dict[str, Any]) -> dict[str, Any]:
        after: dict[str, Any] = {}
        for skip in plan.skipped:
            if skip.reason.endswith(REMEMBERED) and skip.doc_id in before:
                after[skip.doc_id] = before[skip.doc_id]
        for skip in report.skipped:
            planned = plan.files.get(skip.doc_id)
            if planned is None or skip.failure not in ("parse", "limit"):
                continue  # skipped while planning, or a read error: not remembered
            if skip.failure == "parse":
                if skip.content_hash == planned.content_hash:  # the bytes the plan saw, rejected
                    after[skip.doc_id] = {"hash": planned.content_hash, "reason": skip.reason, "final": True}
                continue
            earlier = before.get(skip.doc_id)
            strikes = 1
            if isinstance(earlier, dict) and earlier.get("hash") == planned.content_hash:
                strikes = int(earlier.get("strikes", 0)) + 1
            after[skip.doc_id] = {
                "hash": planned.content_hash,
                "reason": skip.reason,
                "strikes": strikes,
                "final": strikes >= LIMIT_STRIKES,
            }
        return after


def _read(store: ChunkStore) -> dict[str, Any]:
    try:
        data = store.read_state(STATE) or {}
    except Exception as exc:  # unreadable or damaged: start afresh, as if nothing had failed
        _LOG.warning("parse failure memory unreadable (%s); files that failed will be parsed again", exc)
        return {}
    sources = data.get("sources") if isinstance(data, dict) else None
    return dict(sources) if isinstance(sources, dict) else {}
