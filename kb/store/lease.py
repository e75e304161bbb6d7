"""The writer lease of a collection on a Qdrant server: one writer at a time, across hosts.

One point in the payload-only collection ``<alias>-lease`` names the holder (a random token, host, pid, since
when) and when its claim expires. Taking the lease is one conditional upsert — applied only where the point is
absent, expired, or already ours (Qdrant's ``update_filter``) — followed by reading the point back: the server
applies the writes to one point in order, so of two writers racing for a free or expired lease exactly one reads
its own token back. The holder renews the claim from a heartbeat thread every third of ``lease_seconds`` (an
update-only write that succeeds only while the point still carries its token), and every write of the store asks
:meth:`ServerLease.check` first, which refuses once the claim has less than a request timeout to run (renewals
failing) or another token was read back: a paused or partitioned writer stops instead of writing over the next one,
and a write it had already sent lands before the claim runs out.

Expiry is wall-clock time, written by the holder and compared by a contender: hosts must agree on the time to
well within ``lease_seconds`` (NTP); the server itself does not fence a late write.

    lease = ServerLease(client, "handbook", lease_seconds=60, wait_seconds=10)
    with lease.hold():              # waits up to 10 s for another writer, then IndexLockedError naming it
        ...                         # writes; lease.check() before each
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from kb.errors import IndexLockedError, LeaseLostError

LEASE_SUFFIX = "-lease"
_LEASE_ID = str(uuid.uuid5(uuid.UUID("0b8c3f0e-5d0a-4a57-9d7e-6c3e2b1f9a11"), "writer-lease"))
log = logging.getLogger(__name__)


def now() -> float:
    """Wall-clock seconds (a module function so tests can move the clock past a lease's expiry)."""
    return time.time()


@dataclass(frozen=True)
class LeaseHolder:
    token: str
    host: str
    pid: int
    since: float
    expires_at: float

    @classmethod
    def of(cls, payload: dict[str, Any] | None) -> LeaseHolder | None:
        try:
            p = payload or {}
            return cls(str(p["token"]), str(p["host"]), int(p["pid"]), float(p["since"]), float(p["expires_at"]))
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def live(self) -> bool:
        return self.expires_at > now()

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        left = self.expires_at - now()
        expiry = f"its lease runs out in {left:.0f} s unless renewed" if left > 0 else "its lease has expired"
        return f"pid {self.pid} on {self.host} (writing since {since}; {expiry})"


class WriterLease:
    """No lease (the embedded engine): its file lock (:mod:`kb.locking`) already keeps one writer."""

    token = ""

    def hold(self, on_acquired: Callable[[], None] | None = None) -> AbstractContextManager[None]:
        return nullcontext()

    def try_hold(self, on_acquired: Callable[[], None] | None = None) -> AbstractContextManager[bool]:
        return nullcontext(True)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if this process may no longer write."""

    def holder(self) -> LeaseHolder | None:
        """The live holder of the lease (this process or another), or ``None``."""
        return None

    def held_elsewhere(self) -> LeaseHolder | None:
        """The live holder when it is another process (a writer mid-write), else ``None``."""
        return None

    @property
    def held(self) -> bool:
        return False

    def close(self) -> None: ...


NO_LEASE = WriterLease()


class ServerLease(WriterLease):
    """The lease of one alias, shared by every store object of one process (live store and staging)."""

    def __init__(
        self, client: Any, alias: str, lease_seconds: float, wait_seconds: float, request_seconds: float = 30.0
    ) -> None:
        self.client = client
        self.alias = alias
        self.collection = alias + LEASE_SUFFIX
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        # A write is sent only while the claim has this long to run: a request still on its way (at most the
        # request timeout) lands before any other writer can take the lease over.
        self.margin = min(request_seconds, lease_seconds / 2)
        self.token = uuid.uuid4().hex
        self._guard = threading.RLock()  # the count, and one acquisition at a time in this process
        self._count = 0
        self._since = 0.0
        self._valid_until = 0.0
        self._lost = ""
        self._listeners: list[Callable[[], None]] = []
        self._stop: threading.Event | None = None
        self._beat: threading.Thread | None = None
        self._collection_ready = False

    # -- holding --------------------------------------------------------------------------------------
    def on_acquired(self, listener: Callable[[], None]) -> None:
        """Run ``listener`` each time this process takes the lease (the store re-reads what the last writer left)."""
        self._listeners.append(listener)

    @contextmanager
    def hold(self, on_acquired: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lease for the block (re-entrant, shared by this process's threads); ``on_acquired`` runs
        when this call is the one that takes it."""
        self._enter(self.wait_seconds, on_acquired)
        try:
            yield
        finally:
            self._exit()

    @contextmanager
    def try_hold(self, on_acquired: Callable[[], None] | None = None) -> Iterator[bool]:
        """Like :meth:`hold` without waiting: yields ``False`` (and holds nothing) while another writer has it."""
        try:
            self._enter(0.0, on_acquired)
        except IndexLockedError:
            yield False
            return
        try:
            yield True
        finally:
            self._exit()

    @property
    def held(self) -> bool:
        return self._count > 0

    def check(self) -> None:
        if not self._count:
            return
        if self._lost:
            raise LeaseLostError(self._lost)
        if now() > self._valid_until - self.margin:
            raise LeaseLostError(
                f"the writer lease of collection {self.alias!r} could not be renewed in time "
                "(is the Qdrant server reachable?); this writer stopped before writing, since another may have "
                "taken over. Run the reindex again: it continues from what was written."
            )

    def holder(self) -> LeaseHolder | None:
        records = self.client.retrieve(self.collection, [_LEASE_ID], with_payload=True) if self._exists() else []
        holder = LeaseHolder.of(records[0].payload) if records else None
        return holder if holder is not None and holder.live else None

    def held_elsewhere(self) -> LeaseHolder | None:
        holder = self.holder()
        return holder if holder is not None and holder.token != self.token else None

    def close(self) -> None:
        """Stop renewing and give the lease back (when this process still holds it)."""
        with self._guard:
            if self._count:
                self._count = 0
                self._release()

    # -- taking, renewing, giving back ----------------------------------------------------------------
    def _enter(self, wait: float, on_acquired: Callable[[], None] | None) -> None:
        with self._guard:
            if self._count:
                self.check()
                self._count += 1
                return
            self._acquire(wait)
            self._count = 1  # before the listeners: what they write re-enters this lease
            try:
                for listener in [*self._listeners, *([on_acquired] if on_acquired else [])]:
                    listener()
            except BaseException:
                self._count = 0
                self._release()
                raise

    def _exit(self) -> None:
        with self._guard:
            self._count -= 1
            if self._count == 0:
                self._release()

    def _acquire(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            holder = self._claim(renew=False)
            if holder is not None and holder.token == self.token:
                self._lost = ""
                self._start_heartbeat()
                return
            left = deadline - time.monotonic()
            if left <= 0:
                who = holder.describe() if holder is not None else "another writer"
                raise IndexLockedError(
                    f"collection {self.alias!r} is being written by {who}; one writer at a time per "
                    f"collection. Wait for it to finish (qdrant_lease_wait = {wait:g} s was not long enough), or, if "
                    "that process is gone, its lease runs out by itself."
                )
            if holder is not None:  # held by another writer: poll until it is released or expires
                time.sleep(min(max(left, 0.0), 0.5, max(0.02, self.lease_seconds / 10)))

    def _claim(self, renew: bool) -> LeaseHolder | None:
        """One conditional write of our claim, then the point as the server holds it (``None``: no point)."""
        from qdrant_client import models  # here, not at import: the embedded path never loads qdrant-client

        self._ensure_collection()
        started = now()
        since = self._since if renew else started
        mine = models.FieldCondition(key="token", match=models.MatchValue(value=self.token))
        claim = models.PointStruct(
            id=_LEASE_ID,
            vector={},
            payload={"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "since": since,
                     "expires_at": started + self.lease_seconds},
        )  # fmt: skip
        if renew:  # only while the point is still ours; a vanished point is not re-created
            condition = models.Filter(must=[mine])
            self.client.upsert(self.collection, [claim], wait=True, ordering=models.WriteOrdering.STRONG,
                               update_filter=condition, update_mode=models.UpdateMode.UPDATE_ONLY)  # fmt: skip
        else:  # absent, expired, or ours
            expired = models.FieldCondition(key="expires_at", range=models.Range(lt=started))
            condition = models.Filter(should=[expired, mine])
            self.client.upsert(self.collection, [claim], wait=True, ordering=models.WriteOrdering.STRONG,
                               update_filter=condition)  # fmt: skip
        records = self.client.retrieve(
            self.collection, [_LEASE_ID], with_payload=True, consistency=models.ReadConsistencyType.MAJORITY
        )
        holder = LeaseHolder.of(records[0].payload) if records else None
        if holder is not None and holder.token == self.token:
            self._since, self._valid_until = since, started + self.lease_seconds
        return holder

    def _release(self) -> None:
        from qdrant_client import models

        self._stop_heartbeat()
        try:
            mine = models.Filter(
                must=[
                    models.HasIdCondition(has_id=[_LEASE_ID]),
                    models.FieldCondition(key="token", match=models.MatchValue(value=self.token)),
                ]
            )
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=mine), wait=True)
        except Exception as exc:  # it runs out by itself
            log.warning("could not give back the writer lease of %r (%s); it expires by itself", self.alias, exc)

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(self._stop,), name="kb-lease", daemon=True)
        self._beat.start()

    def _stop_heartbeat(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        self._stop = self._beat = None

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            if now() > self._valid_until:
                self._lost = f"the writer lease of collection {self.alias!r} ran out before it could be renewed"
                return
            try:
                holder = self._claim(renew=True)
            except Exception as exc:  # keep trying; check() refuses writes once the claim may have run out
                log.warning("renewing the writer lease of %r failed (%s); retrying", self.alias, exc)
                continue
            if holder is None or holder.token != self.token:
                taken = f"taken over by {holder.describe()}" if holder else "removed"
                self._lost = f"the writer lease of collection {self.alias!r} was {taken}; this writer stopped"
                return

    def _ensure_collection(self) -> None:
        if self._collection_ready:
            return
        if not self.client.collection_exists(self.collection):
            try:
                self.client.create_collection(self.collection, vectors_config={})
            except Exception:
                if not self.client.collection_exists(self.collection):  # not just a race with another writer
                    raise
        self._collection_ready = True

    def _exists(self) -> bool:
        return self._collection_ready or bool(self.client.collection_exists(self.collection))
