"""A fault-injection harness: a power cut at the N-th write point of whatever a KnowledgeBase is doing.

The durability contract kb relies on, and nothing more:
- the embedded store's writes (upsert, deletes, payload updates) are durable only once ``flush()`` returns;
  until then they sit in the engine's WAL and page cache, which a power cut loses — so the harness holds
  them back and hands them to the real store only at ``flush()`` (reads meanwhile see the flushed state);
  a Qdrant server acknowledges ``wait=True`` writes once durable, so there each write is durable at once;
- a state document (``write_state``/``delete_state``: the DIRTY journal, index.json, sources.json) is
  durable once the call returns (fsync of the file and of its folder — checked separately);
- a manifest commit is durable once it returns (an SQLite transaction with synchronous=FULL, or
  acknowledged state points).

Every call of one of those primitives is a *write point*. ``PowerCut(n)`` lets n-1 of them happen, and at
the n-th the machine is gone: that call and every later one raise :class:`PowerLoss` (the code that runs
while the exception unwinds — cleanup handlers — writes nothing either), buffered store writes are
dropped. The test then closes the objects (no further writes reach disk) and opens the index again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kb.knowledge_base import KnowledgeBase

STORE_WRITES = ("upsert", "delete_documents", "delete_version", "set_acl")
STATE_WRITES = ("write_state", "delete_state")


class PowerLoss(BaseException):
    """The machine lost power (a BaseException: ``except Exception`` cleanup must not swallow it)."""


class PowerCut:
    """Counts write points on one open KnowledgeBase and cuts the power at point ``at`` (``None``: never)."""

    def __init__(self, kb: KnowledgeBase, at: int | None, volatile_store: bool) -> None:
        self.kb, self.at, self.volatile = kb, at, volatile_store
        self.points: list[str] = []
        self.pending: list[Callable[[], None]] = []
        self.dead = False
        store = kb.store
        self._real = {name: getattr(store, name) for name in (*STORE_WRITES, *STATE_WRITES, "flush")}
        for name in STORE_WRITES:
            object.__setattr__(store, name, self._store_write(name))
        for name in STATE_WRITES:
            object.__setattr__(store, name, self._durable(name, self._real[name]))
        object.__setattr__(store, "flush", self._flush)
        self._wrap_manifest()

    def _wrap_manifest(self) -> None:
        manifest = self.kb.manifest
        manifest.commit = self._durable("manifest.commit", manifest.commit)  # type: ignore[method-assign]

    def _point(self, name: str) -> None:
        if self.dead:
            raise PowerLoss(f"after the cut: {name}")
        self.points.append(name)
        if self.at is not None and len(self.points) >= self.at:
            self.dead = True
            self.pending.clear()  # what only the page cache held is gone
            raise PowerLoss(f"power cut at write point {len(self.points)} ({name})")

    def _store_write(self, name: str) -> Callable[..., Any]:
        real = self._real[name]

        def write(*args: Any, **kwargs: Any) -> None:
            self._point(f"store.{name}")
            if self.volatile:
                self.pending.append(lambda: real(*args, **kwargs))
            else:
                real(*args, **kwargs)

        return write

    def _durable(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            self._point(name if "." in name else f"store.{name}")
            return real(*args, **kwargs)

        return write

    def _flush(self) -> None:
        self._point("store.flush")
        pending, self.pending = self.pending, []
        for apply in pending:
            apply()
        self._real["flush"]()

    def unplug(self) -> None:
        """After the cut: nothing more reaches the disk; give the objects back (their buffers are gone)."""
        self.pending.clear()
        store = self.kb.store
        for name, real in self._real.items():
            object.__setattr__(store, name, real)
        self.kb.close()
