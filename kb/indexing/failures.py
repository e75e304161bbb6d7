"""Files that failed to parse, remembered so that an unchanged one is not parsed again on every reindex.

    failures = ParseFailures.load(store, settings)
    plan = plan_source(source, manifest, settings, sync=True, failures=failures)   # remembered ones: skipped
    failures.record(plan, report)                                                  # after the plan is applied

A broken file never enters the manifest, so without a memory every reindex would plan it as new and parse it
again: a folder holding one stuck PDF paid ``max_file_seconds`` (60 s by default) on each reindex, and the
torture folder's 27 bad files 10 s, with nothing changed. A failure is remembered with the file's content hash
and the conditions it failed under (the parse limits and kb's version); while all three hold, the plan reports
the file skipped with the same reason, unparsed. A changed file, other limits, a new kb or
``kb reindex --verify`` parse it again. The memory is a cache kept next to the index (a store state
document): losing it costs one parse per broken file, never a document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kb.loading import ParseOptions, SkippedFile
from kb.settings import Settings

if TYPE_CHECKING:
    from kb.indexing.plan import IndexPlan
    from kb.indexing.report import IngestReport
    from kb.store.base import ChunkStore

STATE = "parse_failures"
REMEMBERED = " (unchanged since it failed; `kb reindex --verify` parses it again)"


def conditions(settings: Settings) -> str:
    """What a parse outcome depends on besides the file's bytes."""
    from kb import __version__

    limits = ParseOptions.from_settings(settings)
    return json.dumps(
        {
            "kb": __version__,
            "max_file_bytes": limits.max_file_bytes,
            "max_pdf_pages": limits.max_pdf_pages,
            "max_file_seconds": settings.max_file_seconds,
            "parse_memory_mb": settings.parse_memory_mb,
        },
        sort_keys=True,
    )


@dataclass
class ParseFailures:
    """Per source: document id → the content hash that failed and why (see the module docstring)."""

    store: ChunkStore
    conditions: str
    sources: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, store: ChunkStore, settings: Settings) -> ParseFailures:
        memo = cls(store, conditions(settings))
        data = store.read_state(STATE) or {}
        if data.get("conditions") == memo.conditions and isinstance(data.get("sources"), dict):
            memo.sources = data["sources"]
        return memo

    def known(self, source: str, doc_id: str, content_hash: str) -> SkippedFile | None:
        """The skip to report for this version of the file, when it already failed under these conditions."""
        entry = self.sources.get(source, {}).get(doc_id)
        if entry is None or entry.get("hash") != content_hash:
            return None
        return SkippedFile(doc_id, entry["reason"] + REMEMBERED)

    def record(self, plan: IndexPlan, report: IngestReport) -> None:
        """Remember this run's parse failures of ``plan.source``; forget files now indexed, changed or gone."""
        source = plan.source.name
        before = self.sources.get(source, {})
        after: dict[str, dict[str, str]] = {}
        for skip in plan.skipped:
            if skip.reason.endswith(REMEMBERED) and skip.doc_id in before:
                after[skip.doc_id] = before[skip.doc_id]
        for skip in report.skipped:
            planned = plan.files.get(skip.doc_id)
            if planned is not None:  # planned to be parsed, and the parse failed
                after[skip.doc_id] = {"hash": planned.content_hash, "reason": skip.reason}
        if after == before:
            return
        if after:
            self.sources[source] = after
        else:
            self.sources.pop(source, None)
        self.store.write_state(STATE, self._state())

    def _state(self) -> dict[str, Any]:
        return {"conditions": self.conditions, "sources": self.sources}
