"""``IngestReport``: what an ingest or reindex did, or would do (a dry run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kb.loading import SkippedFile

Progress = Callable[[int, int, str], None]
"""Called as ``progress(done, total, doc_id)``."""

STAGES = ("plan", "load_model", "parse", "embed", "store")


@dataclass
class IngestReport:
    """Documents per outcome, chunks, skipped files (with reasons) and seconds per stage."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    acl_changed: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    chunks_written: int = 0
    chunks_reused: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # files no include pattern picks, by extension
    refused_deletes: str = ""  # why planned deletions were not applied (mass-delete guard)
    not_deleted: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def documents(self) -> int:
        return len(self.added) + len(self.changed) + self.unchanged + len(self.refreshed) + len(self.adopted)

    @property
    def stopped(self) -> bool:
        """Whether part of the plan was refused (the caller should exit non-zero)."""
        return bool(self.refused_deletes)

    def summary(self) -> str:
        extras = [
            f"{len(self.acl_changed)} with a new ACL" if self.acl_changed else "",
            f"{len(self.refreshed)} rewritten" if self.refreshed else "",
            f"{len(self.adopted)} adopted" if self.adopted else "",
            f"{len(self.repaired)} repaired" if self.repaired else "",
            f"{len(self.not_deleted)} deletions refused" if self.not_deleted else "",
        ]
        extra = ", ".join(e for e in extras if e)
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged" + (f" ({extra})" if extra else "")
        )

    def merge(self, other: IngestReport) -> None:
        """Fold the report of another source's run into this one (``kb reindex --all``)."""
        for name in ("added", "changed", "deleted", "acl_changed", "refreshed", "adopted", "repaired", "skipped"):
            getattr(self, name).extend(getattr(other, name))
        self.not_deleted.extend(other.not_deleted)
        self.sources.extend(other.sources)
        self.unchanged += other.unchanged
        for extension, files in other.ignored.items():
            self.ignored[extension] = self.ignored.get(extension, 0) + files
        self.chunks_written += other.chunks_written
        self.chunks_reused += other.chunks_reused
        self.refused_deletes = "\n".join(r for r in (self.refused_deletes, other.refused_deletes) if r)
        for stage, seconds in other.timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self.seconds += other.seconds
        self.dry_run = self.dry_run or other.dry_run

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "documents": self.documents,
            "added": len(self.added),
            "changed": len(self.changed),
            "deleted": len(self.deleted),
            "unchanged": self.unchanged,
            "acl_changed": len(self.acl_changed),
            "rewritten": len(self.refreshed),
            "adopted": len(self.adopted),
            "repaired": len(self.repaired),
            "chunks_written": self.chunks_written,
            "chunks_reused": self.chunks_reused,
            "skipped": [{"doc_id": s.doc_id, "reason": s.reason} for s in self.skipped],
            "ignored": dict(sorted(self.ignored.items())),
            "refused_deletes": self.refused_deletes,
            "not_deleted": len(self.not_deleted),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }
