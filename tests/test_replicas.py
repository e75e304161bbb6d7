"""The Qdrant server backend as a multi-replica deployment (issue 19), simulated in one process.

Several ``KnowledgeBase`` objects — "replicas" and "writers", each with its own index folder as on its own host —
share ONE qdrant-client local-mode client, so they see the same collections as processes on several hosts see one
Qdrant cluster. A wrapper around the client (:class:`Wire`) counts every call one of them makes and injects faults:
a timeout or connection error, a crash (the process is gone: that call and every later one never arrive), a pause,
or a check run at a call boundary.

What local mode does not show: a real server's own concurrency (local mode runs one write at a time behind
kb.store.localmode's lock), replication and read consistency across nodes, network latency. None of this was run
against a real Qdrant server here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

import kb.indexing.indexer as indexer_module
import kb.store.lease as lease_module
from kb import IndexLockedError, KnowledgeBase
from kb.errors import LeaseLostError
from kb.migrate import migrate
from kb.store.localmode import guarded
from tests.conftest import FULL_PROFILE, write

ALIAS = "handbook"
SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive", parse_workers=0)


class Crash(BaseException):
    """The writer's process died: no handler may carry on as if a call had failed."""


class Wire:
    """One process's connection to the shared "cluster": every call counted, faults injected on request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.crash_at: int | None = None  # crash before the call with this number (counted from reset())
        self.crash_on = ""  # crash before the first call of this method
        self.dead = False
        self.down: type[Exception] | None = None  # every call fails with this (a partition), until cleared
        self.fail_once: dict[str, Exception] = {}  # method name → raised by its next call instead of sending it
        self.before: Callable[[str, tuple, dict], None] | None = None  # runs at each call boundary
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.calls = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # nothing private: kb must not see through the wrapper
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self.dead:
                    raise Crash(f"{name} after the crash")
                number = len(self.calls)
                self.calls.append(name)
                if (self.crash_at is not None and number >= self.crash_at) or name == self.crash_on:
                    self.dead = True
                    raise Crash(f"crash before call {number} ({name})")
                fault = self.fail_once.pop(name, None)
            if self.before is not None:
                self.before(name, args, kwargs)
            if self.down is not None:  # (checked after the hook: a call paused there may find the network gone)
                raise self.down(f"{name}: connection refused")
            if fault is not None:
                raise fault
            return attr(*args, **kwargs)

        return call


def page(name: str, version: int, parts: int = 3) -> str:
    body = [f"# Page {name}\n"]
    for i in range(parts):
        body.append(
            f"## Part {i}\n\nThe zq{name}v{version}p{i} token marks version {version} of part {i} of page {name}. "
            f"It explains how the {name} service handles retries, backoff and alerts, in some detail.\n"
        )
    return "\n".join(body)


def write_docs(docs: Path, versions: dict[str, int]) -> None:
    for path in docs.glob("*.md"):
        if path.stem not in versions:
            path.unlink()
    for name, version in versions.items():
        write(docs, f"{name}.md", page(name, version))


V1 = {"alpha": 1, "beta": 1, "gamma": 1, "delta": 1}
V2 = {"alpha": 2, "beta": 2, "gamma": 1, "epsilon": 1}  # two changed, one unchanged, one deleted, one added


def cluster() -> Any:
    return guarded(QdrantClient(location=":memory:"))


def open_kb(root: Path, name: str, client: Any, **settings: Any) -> KnowledgeBase:
    return KnowledgeBase.open(root / name, client=client, qdrant_collection=ALIAS, **{**SMALL, **settings})


def seen(kb: KnowledgeBase) -> dict[str, tuple[str, int]]:
    """What kb's readers see now: doc id → (version, chunks). Two versions of one document at once fail here."""
    counts: dict[str, Counter] = {}
    for hit in kb.store.scroll():
        counts.setdefault(hit.payload["doc_id"], Counter())[hit.payload["doc_hash"]] += 1
    out = {}
    for doc_id, versions in counts.items():
        assert len(versions) == 1, f"{doc_id}: {len(versions)} versions visible at once"
        ((doc_hash, chunks),) = versions.items()
        out[doc_id] = (doc_hash, chunks)
    return out


def top(kb: KnowledgeBase, token: str) -> str:
    hits = kb.search(token, k=1, mode="bm25")
    assert hits, f"nothing found for {token}"
    return hits[0].text


def collections(client: Any) -> set[str]:
    """The collection's physical and state collections on the server (the lease's own is left out)."""
    names = {c.name for c in client.get_collections().collections if c.name.startswith(ALIAS + "-")}
    return names - {ALIAS + "-lease"}


def assert_consistent(kb: KnowledgeBase) -> None:
    """The store holds what the manifest names, complete, nothing else visible; no journal left behind."""
    expected = {d: (e.doc_hash, e.chunks) for d, e in kb.manifest.documents.items()}
    assert seen(kb) == expected
    assert kb.store.versions() == {(d, h): n for d, (h, n) in expected.items()}
    assert kb.store.read_state("DIRTY") is None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Seconds added to the wall clock the leases read (``clock[0] += 100``: every lease is 100 s older)."""
    offset = [0.0]
    monkeypatch.setattr(lease_module, "now", lambda: time.time() + offset[0])
    return offset


# -- 1. readers follow the alias --------------------------------------------------------------------------
def test_a_replica_keeps_answering_across_a_full_rebuild_and_a_migrate_replace(tmp_path: Path) -> None:
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, V1)
    with open_kb(tmp_path, "writer", client) as writer:
        writer.reindex(docs)
    replica = open_kb(tmp_path, "replica", client, qdrant_refresh_seconds=0)
    stale = open_kb(tmp_path, "stale", client, qdrant_refresh_seconds=3600)  # never looks again by itself
    assert "zqalphav1p1" in top(replica, "zqalphav1p1") and "zqalphav1p1" in top(stale, "zqalphav1p1")
    first = replica.store.physical

    write_docs(docs, {**V1, "alpha": 2})
    with open_kb(tmp_path, "writer", client) as writer:
        writer.reindex(docs, full=True)  # a new physical collection behind the alias; the old one retired
        rebuilt = writer.store.physical
    assert rebuilt != first and collections(client) >= {first, rebuilt}
    assert "zqalphav2p1" in top(replica, "zqalphav2p1") and replica.store.physical == rebuilt  # followed
    assert "zqalphav1p1" in top(stale, "zqalphav1p1")  # still served from the retired one, within the grace

    with open_kb(tmp_path, "cleaner", client, qdrant_grace_seconds=0):  # the grace period is over: dropped
        assert first not in collections(client)
    assert "zqalphav2p1" in top(stale, "zqalphav2p1")  # its collection is gone: it follows the alias now

    write_docs(docs, {**V1, "alpha": 3})
    with KnowledgeBase.open(tmp_path / "embedded", **SMALL) as embedded:  # kb migrate --replace of another index
        embedded.reindex(docs)
    report = migrate(tmp_path / "embedded", "local:unused", collection=ALIAS, replace=True, client=client)
    assert report.verified
    assert "zqalphav3p1" in top(replica, "zqalphav3p1")
    assert "zqalphav2p1" in top(stale, "zqalphav2p1")  # the collection it reads is retired, not dropped
    with open_kb(tmp_path, "cleaner", client, qdrant_grace_seconds=0):
        pass
    assert "zqalphav3p1" in top(stale, "zqalphav3p1")
    assert collections(client) == {replica.store.physical, replica.store.physical + "-state"}
    replica.close()
    stale.close()


# -- 2. the writer lease ---------------------------------------------------------------------------------
def pause_at(wire: Wire, when: Callable[[str, tuple, dict], bool]) -> tuple[threading.Event, threading.Event]:
    """Stop the process behind ``wire`` at the first call that ``when`` picks: (paused, go on)."""
    paused, go = threading.Event(), threading.Event()

    def boundary(name: str, args: tuple, kwargs: dict) -> None:
        if not paused.is_set() and when(name, args, kwargs):
            paused.set()
            assert go.wait(60)

    wire.before = boundary
    return paused, go


def in_points(collection: Any) -> bool:
    return not str(collection).endswith(("-state", "-lease"))


def test_a_second_writer_fails_fast_naming_the_holder_or_waits_for_it(tmp_path: Path) -> None:
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, V1)
    a_wire, patient_wire = Wire(client), Wire(client)
    a = open_kb(tmp_path, "a", a_wire)
    b = open_kb(tmp_path, "b", client, qdrant_lease_wait=0)
    patient = open_kb(tmp_path, "patient", patient_wire, qdrant_lease_wait=60)
    paused, go = pause_at(a_wire, lambda name, args, kwargs: name == "upsert" and in_points(args[0]))
    job = a.reindex_in_background(docs)
    assert paused.wait(30)  # a is inside its first write batch
    holder = rf"pid {os.getpid()} on {re.escape(socket.gethostname())} \(writing since"
    with pytest.raises(IndexLockedError, match=holder):
        b.reindex(docs)
    waited = re.escape("qdrant_lease_wait = 0.3 s was not long enough")
    with open_kb(tmp_path, "c", client, qdrant_lease_wait=0.3) as c, pytest.raises(IndexLockedError, match=waited):
        started = time.monotonic()
        c.reindex(docs)
    assert time.monotonic() - started >= 0.3

    claims, polling = [], threading.Event()

    def count_claims(name: str, args: tuple, kwargs: dict) -> None:
        if name == "upsert" and str(args[0]).endswith("-lease"):
            claims.append(name)
            if len(claims) >= 2:
                polling.set()

    patient_wire.before = count_claims
    waiting = patient.reindex_in_background(docs)
    assert polling.wait(30) and waiting.running  # it tries the lease again and again: it waits
    go.set()
    assert len(job.wait(60).added) == 4
    # Then the patient writer goes ahead, from the manifest a left (re-read with the lease): nothing to do.
    assert waiting.wait(60).summary() == "0 added, 0 changed, 0 deleted, 4 unchanged"
    assert b.reindex(docs).summary() == "0 added, 0 changed, 0 deleted, 4 unchanged"
    for kb in (a, b, patient):
        kb.close()


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops(tmp_path: Path, clock: list[float]) -> None:
    client, docs, extra = cluster(), tmp_path / "docs", tmp_path / "extra"
    write_docs(docs, V1)
    write(extra, "zeta.md", page("zeta", 1))
    a_wire = Wire(client)
    a = open_kb(tmp_path, "a", a_wire, qdrant_lease_seconds=30)
    b = open_kb(tmp_path, "b", client, qdrant_lease_seconds=30, qdrant_lease_wait=0)
    b.reindex(docs)
    write_docs(docs, V2)

    def entries(name: str, args: tuple, kwargs: dict) -> bool:  # a's first manifest commit (its batch is written)
        points = kwargs.get("points") or (args[1] if len(args) > 1 else [])
        return name == "upsert" and str(args[0]).endswith("-state") and "kind" in (points[0].payload or {})

    paused, go = pause_at(a_wire, entries)
    job = a.reindex_in_background(docs)
    assert paused.wait(30)
    a_wire.down = ConnectionError  # a's host drops off the network mid-batch: no renewals, nothing more arrives
    with pytest.raises(IndexLockedError, match="runs out in"):
        b.reindex(extra)  # still a live claim
    clock[0] += 31  # no renewal for longer than the lease
    assert b.reindex(extra).added == ["extra:zeta.md"]  # taken over: a's half-written batch swept first…
    assert_consistent(b)  # …so publishing b's batch did not reveal a's unfinished one
    go.set()
    with pytest.raises((ConnectionError, LeaseLostError)):
        job.wait(30)
    a_wire.down = None
    # a is back. Its old job stopped; a new write takes the lease afresh (b gave it back) and starts from what b
    # committed meanwhile (the manifest is re-read with the lease), not from a's stale copy.
    assert a.reindex(docs).summary() == "1 added, 2 changed, 1 deleted, 1 unchanged"  # V1 → V2
    assert_consistent(a)
    assert b.reindex(docs).summary().startswith("0 added, 0 changed, 0 deleted")  # b sees a's writes
    assert_consistent(b)
    assert b.store.lease.holder() is None  # b gave the lease back; a's exit did not touch it
    a.close()
    b.close()


# -- 3 + 2. a writer killed at every call boundary --------------------------------------------------------
@pytest.fixture(scope="module")
def indexed_v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """V1 indexed into a local-mode folder (copied for each crash), the docs folder then changed to V2."""
    root = tmp_path_factory.mktemp("crash-base")
    docs, data = root / "docs", root / "cluster"
    write_docs(docs, V1)
    client = QdrantClient(path=str(data))
    with open_kb(root, "base", guarded(client)) as kb:
        kb.reindex(docs)
        old = {d: e.doc_hash for d, e in kb.manifest.documents.items()}
    client.close()
    write_docs(docs, V2)
    return docs, data, old


def crash_run(base: tuple[Path, Path, dict[str, str]], tmp: Path, at: int | None, full: bool,
              clock: list[float]) -> int:  # fmt: skip
    """Reindex with a crash before call ``at`` of the reindex, then open as the next process would; check."""
    docs, data, old = base
    shutil.copytree(data, tmp / "cluster")
    client = guarded(QdrantClient(path=str(tmp / "cluster")))
    wire = Wire(client)
    writer = open_kb(tmp, "writer", wire, qdrant_lease_seconds=600)
    wire.reset()
    wire.crash_at = at
    with suppress(Crash):
        writer.reindex(docs, full=full)
    calls = len(wire.calls)
    with suppress(Crash):
        writer.close()
    clock[0] += 1000  # the dead writer's lease has run out
    with open_kb(tmp, "next", client, qdrant_grace_seconds=0) as kb:  # opens: swept, orphans dropped
        new = {f"docs:{p.name}": h for p, h in ((p, _sha(p)) for p in docs.glob("*.md"))}
        for doc_id, entry in kb.manifest.documents.items():
            assert entry.doc_hash in {old.get(doc_id), new.get(doc_id)} - {None}, (at, doc_id)
        for doc_id in set(old) & set(new):
            assert doc_id in kb.manifest.documents, (at, doc_id)  # nothing indexed and still there was lost
        assert_consistent(kb)
        live = kb.store.physical
        assert collections(client) == {live, live + "-state"}, at  # no orphan left
        kb.reindex(docs)  # the next reindex completes the job
        assert {d: e.doc_hash for d, e in kb.manifest.documents.items()} == new
        assert_consistent(kb)
    client.close()
    return calls


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("full", [False, True], ids=["reindex", "full-rebuild"])
def test_a_writer_killed_at_every_call_boundary_leaves_old_or_new_and_no_orphans(
    indexed_v1, full: bool, tmp_path: Path, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer_module, "EMBED_FLUSH_CHUNKS", 6)  # a few write batches
    (tmp_path / "all").mkdir()
    total = crash_run(indexed_v1, tmp_path / "all", None, full, clock)
    assert total >= 20, total
    # Every boundary, the one after the last call included (the full profile; `make test`: every other one).
    chosen = range(total + 1) if FULL_PROFILE or not full else sorted({*range(0, total + 1, 2), total})
    for at in chosen:
        (tmp_path / f"at-{at}").mkdir()
        crash_run(indexed_v1, tmp_path / f"at-{at}", at, full, clock)


def test_an_unfinished_rebuild_is_dropped_only_once_no_live_writer_owns_it(tmp_path: Path, clock: list[float]) -> None:
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, V1)
    wire = Wire(client)
    writer = open_kb(tmp_path, "writer", wire, qdrant_lease_seconds=60)
    writer.reindex(docs)
    live = writer.store.physical
    wire.crash_on = "update_collection"  # killed at promote's first step: the rebuild is complete, not switched
    with pytest.raises(Crash):
        writer.reindex(docs, full=True)
    kept = {live, live + "-state"}
    orphan = {c for c in collections(client) - kept if not c.endswith("-state")}
    assert len(orphan) == 1 and orphan | {c + "-state" for c in orphan} | kept == collections(client)
    with open_kb(tmp_path, "replica", client):  # the rebuild's writer may still be alive: left alone
        assert orphan <= collections(client)
    clock[0] += 61
    with open_kb(tmp_path, "later", client) as kb:  # its lease ran out: dropped, with its state collection
        assert collections(client) == {live, live + "-state"}
        assert "zqbetav1p2" in top(kb, "zqbetav1p2")
    with suppress(Crash):
        writer.close()


# -- 4. searches in parallel -----------------------------------------------------------------------------
def test_searches_run_in_parallel_during_a_reindex(tmp_path: Path) -> None:
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, V1)
    wire = Wire(client)
    kb = open_kb(tmp_path, "kb", wire)
    kb.reindex(docs)
    replica = open_kb(tmp_path, "replica", wire, qdrant_refresh_seconds=0)
    write_docs(docs, V2)
    together = threading.Barrier(3, timeout=20)  # a query returns only once three are in flight
    in_batch, release = threading.Event(), threading.Event()

    def boundary(name: str, args: tuple, kwargs: dict) -> None:
        if name == "query_points":
            together.wait()
        elif name == "upsert" and not str(args[0]).endswith(("-state", "-lease")) and not in_batch.is_set():
            in_batch.set()  # the writer is inside its first write batch: its write lock and the lease held
            assert release.wait(30)

    wire.before = boundary
    job = kb.reindex_in_background(docs)
    assert in_batch.wait(30)
    found: list[str] = []
    searches = [
        threading.Thread(target=lambda who=who: found.append(top(who, "zqgammav1p0")))
        for who in (kb, kb, replica)  # two in the writing process itself, one on a replica
    ]
    for thread in searches:
        thread.start()
    for thread in searches:
        thread.join(30)
    release.set()
    assert len(found) == 3 and not together.broken  # all three were in the store at the same time
    wire.before = None
    assert job.wait(60).changed
    kb.close()
    replica.close()


# -- 6. replicas see each document old or new -------------------------------------------------------------
def test_a_replica_sees_each_document_old_or_new_at_every_call_of_a_reindex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer_module, "EMBED_FLUSH_CHUNKS", 6)
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, V1)
    wire = Wire(client)
    writer = open_kb(tmp_path, "writer", wire)
    writer.reindex(docs)
    old = {d: (e.doc_hash, e.chunks) for d, e in writer.manifest.documents.items()}
    replica = open_kb(tmp_path, "replica", client, qdrant_refresh_seconds=0)
    write_docs(docs, V2)
    views: list[dict[str, tuple[str, int]]] = []

    def boundary(name: str, args: tuple, kwargs: dict) -> None:
        views.append(seen(replica))  # between every two calls of the writer
        shown: dict[str, set[str]] = {}
        for hit in replica.search("zqalphav1p0 zqalphav2p0 zqbetav1p0 zqbetav2p0", k=10, mode="bm25"):
            shown.setdefault(hit.doc_id, set()).add(hit.text.split("marks version ")[1].split()[0])
        assert all(len(v) == 1 for v in shown.values()), shown  # one query never mixes two versions

    wire.before = boundary
    writer.reindex(docs)
    wire.before = None
    new = {d: (e.doc_hash, e.chunks) for d, e in writer.manifest.documents.items()}
    switched: set[str] = set()
    for view in views:
        for doc_id, version in view.items():
            assert version in {old.get(doc_id), new.get(doc_id)}, (doc_id, version)  # one whole version
            if version == new.get(doc_id) != old.get(doc_id):
                switched.add(doc_id)
            elif doc_id in switched:
                pytest.fail(f"{doc_id} went back to its old version")
        for doc_id in (set(old) & set(new)) - set(view):
            pytest.fail(f"{doc_id} was invisible (neither version)")
    assert switched == {"docs:alpha.md", "docs:beta.md", "docs:epsilon.md"}
    assert len(views) > 20 and views[0] != views[-1]
    writer.close()
    replica.close()


# -- faults that are not crashes --------------------------------------------------------------------------
def test_timeouts_and_connection_errors_leave_replicas_answering_and_the_next_reindex_completes(
    tmp_path: Path,
) -> None:
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, V1)
    writer_wire, replica_wire = Wire(client), Wire(client)
    writer = open_kb(tmp_path, "writer", writer_wire)
    writer.reindex(docs)
    replica = open_kb(tmp_path, "replica", replica_wire, qdrant_refresh_seconds=0)
    write_docs(docs, V2)
    writer_wire.fail_once["set_payload"] = TimeoutError("timed out")  # marking the replaced versions
    with pytest.raises(TimeoutError):
        writer.reindex(docs)
    assert_consistent(writer)  # the failed writer swept at once
    assert seen(replica) == seen(writer)
    replica_wire.fail_once["get_aliases"] = ConnectionError("refused")  # its refresh fails: it keeps its view
    assert "zqgammav1p1" in top(replica, "zqgammav1p1")
    writer.reindex(docs)
    assert_consistent(writer)
    assert "zqalphav2p1" in top(replica, "zqalphav2p1")
    writer.close()
    replica.close()


# -- 5. the manifest is one point per document --------------------------------------------------------------
def test_a_manifest_commit_sends_only_the_changed_documents(tmp_path: Path) -> None:
    client, docs = cluster(), tmp_path / "docs"
    write_docs(docs, {f"p{i}": 1 for i in range(30)})
    sent: list[list[dict]] = []

    class Counting(Wire):
        def __getattr__(self, name: str) -> Any:
            call = super().__getattr__(name)
            if name != "upsert":
                return call

            def upsert(collection: str, points: list, **kwargs: Any) -> Any:
                if collection.endswith("-state"):
                    sent.append([p.payload for p in points])
                return call(collection, points, **kwargs)

            return upsert

    with open_kb(tmp_path, "kb", Counting(client)) as kb:
        kb.reindex(docs)
        sent.clear()
        write(docs, "p7.md", page("p7", 2))
        assert kb.reindex(docs).changed == ["docs:p7.md"]
    entries = [p for batch in sent for p in batch if p.get("kind") == "document"]
    assert [e["doc_id"] for e in entries] == ["docs:p7.md"]  # 1 of 30 entries written
    assert sum(len(batch) for batch in sent) <= 8  # + DIRTY, manifest-meta, generation, sources.json, DIRTY…
