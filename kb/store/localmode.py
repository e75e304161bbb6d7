"""qdrant-client's local mode, made safe to share between threads.

Local mode (``QdrantClient(path=...)`` or ``":memory:"``) keeps collections in Python objects with no locking of
its own: a search while an upsert grows the vector arrays can read them half-grown. A Qdrant server needs no such
thing. :func:`guarded` wraps a local-mode client so that reads run in parallel and each write runs alone (the
writer waits for running reads and is not starved by new ones). Searches are brute force in local mode, so it
stands in for a server's API and semantics, not its speed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

READS = frozenset({
    "query_points", "query_batch_points", "scroll", "count", "retrieve", "get_collection", "get_collections",
    "get_aliases", "get_collection_aliases", "collection_exists",
})  # fmt: skip


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers)
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class LocalModeClient:
    """A local-mode ``QdrantClient`` behind a :class:`ReadWriteLock` (every other attribute passed through)."""

    def __init__(self, client: Any) -> None:
        self._inner = client
        self._lock = ReadWriteLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        section = self._lock.reading if name in READS else self._lock.writing

        def call(*args: Any, **kwargs: Any) -> Any:
            with section():
                return attr(*args, **kwargs)

        return call


def is_local(client: Any) -> bool:
    from qdrant_client.local.qdrant_local import QdrantLocal

    return isinstance(getattr(client, "_client", None), QdrantLocal)


def guarded(client: Any) -> Any:
    """``client`` made thread-safe if it is a local-mode client; any other client unchanged."""
    if isinstance(client, LocalModeClient) or not is_local(client):
        return client
    return LocalModeClient(client)
