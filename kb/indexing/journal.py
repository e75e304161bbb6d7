"""The durable write order of an index, the crash sweep, and the check of the manifest against the store.

Every write follows one order, each step durable before the next starts:

1. the ``DIRTY`` journal entry is written (a state document: fsynced file + folder, or a server point);
2. a batch's new points are upserted and the store flushed;
3. the manifest commit names them (SQLite transaction / state points);
4. the old versions' points are deleted;
5. when the last writer finishes, the store is flushed and ``DIRTY`` removed.

After a crash or a power cut at any point, the next open finds ``DIRTY`` and :func:`sweep` deletes every
(document, version) the manifest does not name and drops manifest entries whose points are incomplete
(their files are re-read by the next reindex): each document is in its old or its new version.

On a Qdrant server several processes share the collection, so a write operation first takes the store's writer
lease (:meth:`Journal.holding`; the embedded engine has its file lock instead) and re-reads the manifest another
host may have changed, and ``DIRTY`` means a crash only when no live writer holds the lease: a replica that opens
while another host is writing leaves that writer's journal alone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kb.manifest import Manifest
from kb.store.base import ChunkStore

DIRTY = "DIRTY"
log = logging.getLogger(__name__)


class Journal:
    """Marks an index dirty while any writer of this process is writing (writers may overlap)."""

    def __init__(self, store: ChunkStore, manifest: Manifest, legacy_marker: Path | None = None) -> None:
        self.store, self.manifest = store, manifest
        self._legacy_marker = legacy_marker  # the plain-text DIRTY file of older versions
        self._lock = threading.Lock()
        self._writers = 0
        self._failed = False

    @contextmanager
    def holding(self) -> Iterator[None]:
        """The store's writer lease for a whole write operation, planning included (waits or fails naming the
        holder). See :meth:`_taken` for what taking it does first."""
        with self.store.lease.hold(on_acquired=self._taken):
            yield

    def _taken(self) -> None:
        """This process just took the server's writer lease: re-read the manifest (another host may have written
        since), and finish what a previous holder left half-done (its ``DIRTY``: it crashed, or lost the lease)."""
        self.manifest.reload()
        if self.store.read_state(DIRTY) is not None:
            self._sweep_and_clear()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self.holding():
            with self._lock:
                if self._writers == 0:
                    entry = {"since": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
                             "writer": self.store.lease.token}  # fmt: skip
                    self.store.write_state(DIRTY, entry)
                self._writers += 1
            try:
                yield
            except BaseException:
                with self._lock:
                    self._failed = True
                    self._finish()
                raise
            with self._lock:
                self._finish()

    def _finish(self) -> None:
        self._writers -= 1
        if self._writers:
            return
        if self._failed:  # no writer is left in flight: clean up what the failed one half-wrote
            sweep(self.store, self.manifest)
            self._failed = False
        self.store.flush()
        self.store.delete_state(DIRTY)

    def dirty(self) -> bool:
        legacy = self._legacy_marker is not None and self._legacy_marker.exists()
        return legacy or self.store.read_state(DIRTY) is not None

    def recover(self) -> int:
        """After a crash: sweep, then clear the journal. Returns the points deleted.

        Nothing happens while another process holds the writer lease: its ``DIRTY`` is work in progress."""
        with self.store.lease.try_hold(on_acquired=self.manifest.reload) as held:
            if not held:
                log.info("%s: another writer is at work; its journal is left to it", self.store.describe())
                return 0
            return self._sweep_and_clear() if self.dirty() else 0  # (that writer may have finished meanwhile)

    def _sweep_and_clear(self) -> int:
        with self._lock:
            deleted = sweep(self.store, self.manifest)
            self.store.flush()
            self.store.delete_state(DIRTY)
            if self._legacy_marker is not None:
                self._legacy_marker.unlink(missing_ok=True)
            return deleted


def sweep(store: ChunkStore, manifest: Manifest) -> int:
    """Delete every stored (document, version) the manifest does not name; returns points deleted.

    Also drops manifest entries whose points are missing or incomplete, so the next reindex re-adds them.
    """
    documents = manifest.snapshot()
    deleted = 0
    with store.settling(documents):  # server: one batch, published when the store agrees with the manifest
        versions = store.versions()
        for (doc_id, doc_hash), count in versions.items():
            entry = documents.get(doc_id)
            if entry is None or entry.doc_hash != doc_hash:
                store.delete_version(doc_id, doc_hash)
                deleted += count
        broken = [d for d, e in documents.items() if versions.get((d, e.doc_hash), 0) != e.chunks]
        for doc_id in broken:
            store.delete_version(doc_id, documents[doc_id].doc_hash)
        store.flush()
        if broken:
            manifest.commit(delete=broken)
    return deleted


@dataclass
class Damage:
    """What the store lacks compared with the manifest (a lost or partly lost shard), and extra points."""

    missing: dict[str, tuple[int, int]] = field(default_factory=dict)  # doc id → (chunks stored, expected)
    orphans: int = 0  # points of no (document, version) the manifest names

    @property
    def damaged(self) -> bool:
        return bool(self.missing)

    def describe(self, index: str) -> str:
        lost = sum(expected - have for have, expected in self.missing.values())
        first = ", ".join(list(self.missing)[:3])
        return (
            f"{index}: {len(self.missing)} documents are missing {lost} of their chunks in the store "
            f"(e.g. {first}); search cannot find them. Run: kb reindex --all --repair --kb {index} "
            "(re-reads and re-embeds only what is missing)"
        )


def check_store(store: ChunkStore, manifest: Manifest) -> Damage:
    """Compare the manifest with the store: a count first (cheap), per document only when they differ.

    While another process holds the server's writer lease the two legitimately differ (it is mid-write, and this
    process's manifest predates it): no verdict then, the next open checks again."""
    if store.lease.held_elsewhere() is not None:
        return Damage()
    documents = manifest.snapshot()
    expected = sum(e.chunks for e in documents.values())
    have = store.count()
    if have == expected:
        return Damage()
    versions = store.versions()
    damage = Damage()
    named = 0
    for doc_id, entry in documents.items():
        stored = versions.get((doc_id, entry.doc_hash), 0)
        named += stored
        if stored < entry.chunks:
            damage.missing[doc_id] = (stored, entry.chunks)
    damage.orphans = sum(versions.values()) - named
    return damage
