"""Server backend: a Qdrant server or cluster through ``qdrant-client`` (also its local mode).

Built for a deployment of several processes on several hosts — ``kb serve`` replicas behind a load balancer, a
reindex job elsewhere, one Qdrant cluster:

- **The alias.** The collection name users configure is an alias; the points live in a physical collection
  ``<alias>-<8 hex>`` behind it, and ``index.json``, the manifest (one point per document), the ``DIRTY`` journal
  and the published generation in ``<physical>-state`` next to it. A full rebuild (or ``kb migrate --replace``)
  fills a new physical collection and switches the alias in one step.
- **Readers follow it.** A query goes to the store's *view* (:class:`kb.store.generations.View`): the physical
  collection and its published generation, re-read every ``qdrant_refresh_seconds``, and at once when the
  collection is gone. The collection a switch replaced is kept for ``qdrant_grace_seconds`` (replicas still
  reading it finish), then dropped by the next writer or open. Queries take no lock: they run in parallel.
- **Each document old or new, on every replica.** Writes are batches (:meth:`ServerChunkStore.transaction`)
  whose new points stay hidden and whose replaced points stay visible until the batch publishes its
  generation (:mod:`kb.store.generations`); only the write sequence (upsert → manifest → mark replaced →
  publish) is ordered, by this process's write lock.
- **One writer per collection**, across hosts: the writer lease (:mod:`kb.store.lease`), taken for each write
  operation and renewed while it runs. A rebuild that crashed leaves an unpromoted ``<alias>-<8 hex>``; the
  next open that can take the lease drops it when it is older than a lease period and no live writer owns it.

qdrant-client's local mode stands in for a server in the tests (aliases, conditional upserts, collection
metadata and filters behave alike); a real server's concurrency, replication and consistency levels were not
exercised here (see the README's deployment section).

    from qdrant_client import QdrantClient
    store = ServerChunkStore(QdrantClient(":memory:"), "handbook", dimension=384, bm25=Bm25Encoder())
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models

from kb.errors import ConfigError, EmbedderMismatchError, IndexNotFoundError
from kb.manifest import INDEX_FILE, LEGACY_MANIFEST_FILE, DocumentEntry, parse_entry
from kb.settings import FusionMethod, Quantization, Settings
from kb.sparse import Bm25Encoder
from kb.store import generations as gen
from kb.store import lease as leases
from kb.store.base import (
    ACL_FIELD,
    BM25,
    DENSE,
    KEYWORD_INDEXES,
    POINT_ID,
    ChunkStore,
    ScoredChunk,
    StoredPoint,
    dense_vector,
)
from kb.store.generations import GENERATION_STATE, View, visible
from kb.store.lease import NO_LEASE, ServerLease, WriterLease
from kb.store.localmode import guarded
from kb.store.plan import Leg, QueryPlan

STATE_SUFFIX = "-state"
DIRTY = "DIRTY"  # kb.indexing.journal.DIRTY: a writer's journal entry, present until its work is complete
_STATE_NAMESPACE = uuid.UUID("0b8c3f0e-5d0a-4a57-9d7e-6c3e2b1f9a11")
log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerPolicy:
    """How replicas and writers share a collection (``qdrant_lease_*``, ``qdrant_grace_seconds``, …)."""

    lease_seconds: float = 60.0
    lease_wait: float = 10.0
    grace_seconds: float = 300.0
    refresh_seconds: float = 1.0
    request_seconds: float = 30.0  # qdrant_timeout: how long a sent write may still be on its way

    @classmethod
    def of(cls, settings: Settings) -> ServerPolicy:
        return cls(settings.qdrant_lease_seconds, settings.qdrant_lease_wait, settings.qdrant_grace_seconds,
                   settings.qdrant_refresh_seconds, settings.qdrant_timeout)  # fmt: skip


@dataclass
class _Batch:
    """One write transaction of this process: its generation, and what readers in its thread see."""

    gen: int
    view: View
    wrote: bool = False


class ServerChunkStore(ChunkStore):
    """Chunk store in a Qdrant server collection, same schema and query plan as the embedded engine."""

    _view: View

    def __init__(
        self,
        client: QdrantClient,
        alias: str,
        dimension: int,
        bm25: Bm25Encoder,
        options: dict[str, Any] | None = None,
        physical: str | None = None,
        *,
        owns_client: bool = True,
        policy: ServerPolicy | None = None,
        lease: WriterLease | None = None,
    ) -> None:
        """Open the collection behind ``alias`` (created when missing); ``physical`` opens a staging one.

        ``client`` may be shared by several stores (replicas in one process); it is closed with the store only
        when ``owns_client``. ``lease`` is the live store's, for a staging store."""
        super().__init__(bm25)
        self.alias = alias
        self._view_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._batch: _Batch | None = None
        self._depth = 0
        self._writer: int | None = None
        self._last_gen = 0
        self._aborted: set[int] = set()
        self._incompatible = ""
        self._lease: WriterLease = NO_LEASE
        client = guarded(client)
        self._client, self._owns_client, self._options = client, owns_client, options or {}
        self._policy = policy or ServerPolicy()
        self._is_staging = physical is not None
        if physical is not None:  # staging: invisible until promoted, no generations needed
            self._lease = lease or NO_LEASE
            self._view = View(physical)
            if not client.collection_exists(physical):
                with self._lease.hold():
                    self._create(physical, dimension)
            return
        self._lease = lease or ServerLease(
            client, alias, self._policy.lease_seconds, self._policy.lease_wait, self._policy.request_seconds
        )
        found = _resolve_alias(client, alias)
        if found is None:
            with self._lease.hold():  # two replicas opening a new collection at once create one of them
                found = _resolve_alias(client, alias) or self._create_live(dimension)
        self._view = self._read_view(found)
        self._last_gen = max(self._view.committed, *self._view.aborted, 0)
        self._lease.on_acquired(self._on_lease)
        self.maintain()

    @property
    def client(self) -> QdrantClient:
        return self._client

    @property
    def lease(self) -> WriterLease:
        return self._lease

    @property
    def physical(self) -> str:
        """The physical collection this store reads and writes now."""
        return self._view.physical

    # -- writes: batches of one generation ----------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write batch: this process's other writes wait; readers everywhere see all of it or none of it.

        Holds the writer lease for the batch (a write operation usually holds it already), taken before the write
        lock: whoever takes the lease may write while taking it (a takeover sweeps first). Nested calls join the
        outer batch. A batch that fails is recorded as aborted: its points stay hidden until a sweep."""
        with self._lease.hold(), self._write_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._lease.check()
            batch = self._begin()
            self._batch, self._writer, self._depth = batch, threading.get_ident(), 1
            try:
                yield
                self._publish(batch)
            except BaseException:
                if batch.wrote:
                    self._aborted.add(batch.gen)
                raise
            finally:
                self._batch, self._writer, self._depth = None, None, 0

    def upsert(self, points: list[StoredPoint]) -> None:
        if not points:
            return
        with self.transaction():
            batch = self._current_batch()
            kept = self._visible_generations([p.id for p in points]) if not self._is_staging else {}
            structs = [
                models.PointStruct(
                    id=p.id,
                    vector={DENSE: p.dense, BM25: _sparse(p)},
                    payload={**gen.strip(p.payload), gen.GEN: kept.get(p.id, batch.gen)},
                )
                for p in points
            ]
            self._write(lambda: self._client.upsert(self.physical, points=structs, wait=True))

    def delete_documents(self, doc_ids: list[str]) -> None:
        if doc_ids:
            self._retire({"doc_id": list(doc_ids)})

    def set_acl(self, doc_id: str, acl: list[str]) -> None:
        # In place (no new version): each point switches at once; the points of one document one after another.
        selector = models.FilterSelector(filter=_filter({"doc_id": [doc_id]}))
        with self.transaction():
            self._write(lambda: self._client.set_payload(self.physical, payload={ACL_FIELD: acl}, points=selector,
                                                         wait=True), versioned=False)  # fmt: skip

    def delete_version(self, doc_id: str, doc_hash: str) -> None:
        self._retire({"doc_id": [doc_id], "doc_hash": [doc_hash]})

    def _retire(self, conditions: dict[str, list[Any]]) -> None:
        """Mark the matching points replaced as of this batch (deleted after the grace period); a staging
        collection, which no reader sees, deletes them outright."""
        with self.transaction():
            batch = self._current_batch()
            if self._is_staging:
                selector = models.FilterSelector(filter=_filter(conditions))
                self._write(lambda: self._client.delete(self.physical, points_selector=selector, wait=True))
                return
            live = models.Filter(must=[c for c in [_filter(conditions), gen.not_dead()] if c is not None])
            mark = {gen.DEAD: batch.gen, gen.DEAD_AT: leases.now()}
            selector = models.FilterSelector(filter=live)
            self._write(lambda: self._client.set_payload(self.physical, payload=mark, points=selector, wait=True))

    def _write(self, send: Callable[[], Any], versioned: bool = True) -> None:
        self._lease.check()
        batch = self._current_batch()
        batch.wrote = batch.wrote or versioned
        send()

    def _current_batch(self) -> _Batch:
        assert self._batch is not None, "store writes run inside transaction()"
        return self._batch

    def _begin(self) -> _Batch:
        if self._is_staging:
            return _Batch(0, self._view)
        view = self._view
        number = max(view.committed, self._last_gen, *self._aborted, 0) + 1
        self._last_gen = number
        return _Batch(number, view.at(number, tuple(sorted(self._aborted))))

    def _publish(self, batch: _Batch) -> None:
        """Make the batch visible everywhere: one state point, then this process's view."""
        if self._is_staging or not batch.wrote:
            return
        view = self._view.at(batch.gen, tuple(sorted(g for g in self._aborted if g < batch.gen)))
        self._write_state_in(view.physical, GENERATION_STATE, view.state())
        self._install(view)

    def _visible_generations(self, ids: list[str]) -> dict[str, int]:
        """Points being rewritten in place that readers see now keep their generation (a payload refresh stays
        visible); new or replaced ones get the batch's."""
        view = self._view
        records = self._client.retrieve(self.physical, ids, with_payload=[gen.GEN, gen.DEAD], with_vectors=False)
        kept = {}
        for record in records:
            payload = record.payload or {}
            number, dead = payload.get(gen.GEN), payload.get(gen.DEAD)
            if isinstance(number, int) and dead is None and number <= view.committed and number not in view.aborted:
                kept[str(record.id)] = number
        return kept

    # -- sweeping after a failure or a crash --------------------------------------------------------------
    @contextmanager
    def settling(self, documents: dict[str, DocumentEntry]) -> Iterator[None]:
        """Wrap a sweep (:func:`kb.indexing.journal.sweep`) in one batch: first the versions the manifest names
        lose any replaced-mark an unfinished batch gave them; the sweep then removes what it does not name; at
        the end everything left is published, hidden batches included, and ``aborted`` is cleared."""
        if self._is_staging:
            yield
            return
        with self.transaction():
            self._revive(documents)
            yield
            batch = self._current_batch()
            published = self._view
            for field in (gen.GEN, gen.DEAD):  # unpublished numbers take this batch's
                selector = models.FilterSelector(filter=gen.unsettled(field, published))
                self._write(lambda s=selector, f=field: self._client.set_payload(
                    self.physical, payload={f: batch.gen}, points=s, wait=True))  # fmt: skip
            self._aborted.clear()

    def _revive(self, documents: dict[str, DocumentEntry]) -> None:
        marked: set[tuple[str, str]] = set()
        dead = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=gen.DEAD))])
        for record in self._scroll_all(dead, payload=["doc_id", "doc_hash"]):
            marked.add((str(record.payload.get("doc_id", "")), str(record.payload.get("doc_hash", ""))))
        for doc_id, doc_hash in sorted(marked):
            entry = documents.get(doc_id)
            if entry is not None and entry.doc_hash == doc_hash:
                selector = models.FilterSelector(filter=_filter({"doc_id": [doc_id], "doc_hash": [doc_hash]}))
                self._write(lambda s=selector: self._client.delete_payload(
                    self.physical, keys=[gen.DEAD, gen.DEAD_AT], points=s, wait=True))  # fmt: skip

    def versions(self) -> dict[tuple[str, str], int]:
        """Point count per (doc_id, doc_hash), replaced points left out (they only wait for the grace period)."""
        counts: dict[tuple[str, str], int] = {}
        for record in self._scroll_all(gen.not_dead(), payload=["doc_id", "doc_hash"]):
            key = (record.payload.get("doc_id", ""), record.payload.get("doc_hash", ""))
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _scroll_all(self, where: models.Filter, payload: Any) -> Iterator[Any]:
        offset = None
        while True:
            records, offset = self._client.scroll(
                self.physical, scroll_filter=where, limit=2048, offset=offset, with_payload=payload
            )
            yield from records
            if offset is None:
                return

    # -- reads ----------------------------------------------------------------------------------------
    # -- the query plan, in qdrant-client's request types -----------------------------------------------
    def _query_leg(
        self, leg: Leg, where: dict[str, list[Any]], with_vectors: bool, with_payload: bool = True
    ) -> list[ScoredChunk]:
        def send(view: View) -> Any:
            return self._client.query_points(
                view.physical,
                query=_vector(leg),
                using=leg.name,
                query_filter=visible(view, _filter(where)),
                search_params=_params(leg),
                limit=leg.limit,
                with_payload=with_payload,
                with_vectors=[DENSE] if with_vectors else False,
            )

        return _scored(self._read(send))

    def _query_fused(self, plan: QueryPlan) -> list[ScoredChunk]:
        fusion: Any = (
            models.FusionQuery(fusion=models.Fusion.DBSF)
            if plan.fusion is FusionMethod.DBSF
            else models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k, weights=plan.fusion_weights()))
        )

        def send(view: View) -> Any:
            where = visible(view, _filter(plan.where))
            return self._client.query_points(
                view.physical,
                prefetch=[
                    models.Prefetch(
                        query=_vector(leg), using=leg.name, filter=where, params=_params(leg), limit=leg.limit
                    )
                    for leg in plan.legs
                ],
                query=fusion,
                query_filter=where,
                limit=plan.limit,
                with_payload=True,
                with_vectors=[DENSE] if plan.with_vectors else False,
            )

        return _scored(self._read(send))

    def count(self, conditions: dict[str, list[Any]] | None = None) -> int:
        """Points readers see (replaced ones waiting for the grace period are not counted)."""

        def send(view: View) -> Any:
            return self._client.count(view.physical, count_filter=visible(view, _filter(conditions or {})), exact=True)

        return int(self._read(send).count)

    def _scroll_page(
        self, conditions: dict[str, list[Any]], offset: Any, limit: int, vectors: Any, payload: Any
    ) -> tuple[list[Any], Any]:
        def send(view: View) -> Any:
            return self._client.scroll(
                view.physical,
                scroll_filter=visible(view, _filter(conditions)),
                limit=limit,
                offset=offset,
                with_payload=payload,
                with_vectors=vectors,
            )

        records, next_offset = self._read(send)
        for record in records:
            if record.payload:
                record.payload = gen.strip(record.payload)
        return records, next_offset

    def _read(self, send: Callable[[View], T]) -> T:
        """Run a read on the current view; when its collection is gone (dropped after a switch this replica has
        not seen yet), follow the alias once and retry."""
        if self._incompatible:
            raise EmbedderMismatchError(self._incompatible)
        view = self._current_view()
        try:
            return send(view)
        except Exception as exc:
            if self._is_staging or not _is_not_found(exc):
                raise
        view = self._refresh(view, force=True)
        if self._incompatible:
            raise EmbedderMismatchError(self._incompatible)
        return send(view)

    def _current_view(self) -> View:
        batch = self._batch
        if batch is not None and self._writer == threading.get_ident():
            return batch.view  # the writer's own thread reads its unpublished batch
        view = self._view
        if self._is_staging or self._lease.held or time.monotonic() - view.read_at < self._policy.refresh_seconds:
            return view  # while this process holds the lease its view is the truth
        return self._refresh(view)

    def _refresh(self, seen: View, force: bool = False) -> View:
        """Re-read which collection the alias names and its published generation (a failure keeps ``seen``)."""
        try:
            physical = _resolve_alias(self._client, self.alias)
            if physical is None:
                raise IndexNotFoundError(f"collection alias {self.alias!r} is gone from the Qdrant server")
            fresh = self._read_view(physical)
        except Exception as exc:
            if force:
                raise
            log.warning("could not refresh the view of %r (%s); still reading %s", self.alias, exc, seen.physical)
            fresh = seen.at(seen.committed)
            self._install(fresh, expected=seen)
            return self._view
        if fresh.physical != seen.physical:
            self._check_rebuilt(seen.physical, fresh.physical)
        self._install(fresh, expected=seen)
        return self._view

    def _install(self, view: View, expected: View | None = None) -> None:
        with self._view_lock:  # a refresh that raced with a publish or a switch must not roll the view back
            if expected is None or self._view is expected:
                self._view = view

    def _on_lease(self) -> None:
        """This process just took the lease: write where the alias points now, from the last published state."""
        physical = _resolve_alias(self._client, self.alias)
        if physical is None:
            raise IndexNotFoundError(f"collection alias {self.alias!r} is gone from the Qdrant server")
        fresh = self._read_view(physical)
        if fresh.physical != self._view.physical:
            self._check_rebuilt(self._view.physical, fresh.physical)
        self._install(fresh)
        self._aborted = set(fresh.aborted)
        self._last_gen = max(self._last_gen, fresh.committed, *fresh.aborted, 0)
        self._drop_expired()

    def _check_rebuilt(self, old: str, new: str) -> None:
        """A rebuild with another embedder cannot be searched with this process's query vectors: say so."""
        before, after = self._read_state_in(old, INDEX_FILE), self._read_state_in(new, INDEX_FILE)
        if before and after and before.get("embedder") != after.get("embedder"):
            self._incompatible = (
                f"collection {self.alias!r} was rebuilt with embedder {after.get('embedder', {}).get('name')!r} "
                f"(was {before.get('embedder', {}).get('name')!r}); this process embeds queries for the old one. "
                "Restart it with the settings the collection was rebuilt with."
            )

    # -- maintenance --------------------------------------------------------------------------------
    def maintain(self) -> None:
        """Drop what no reader needs any more — collections replaced longer than the grace period ago, rebuilds
        that never finished (older than a lease period, no live writer), replaced points past the grace period —
        when no other writer is at work (else the next one does it)."""
        with self._lease.try_hold():  # taking the lease runs _on_lease → _drop_expired
            pass

    def _drop_expired(self) -> None:
        names = {c.name for c in self._client.get_collections().collections}
        live = {a.collection_name for a in self._client.get_aliases().aliases}
        pattern = re.compile(rf"{re.escape(self.alias)}-[0-9a-f]{{8}}")
        moment = leases.now()
        for name in sorted(n for n in names if pattern.fullmatch(n) and n not in live):
            meta = self._client.get_collection(name).config.metadata or {}
            if self._expired(meta, moment):
                log.info("dropping %s (%s)", name, "replaced" if "kb_retired_at" in meta else "unfinished rebuild")
                self._drop(name)
                names.discard(name)
        for name in sorted(n for n in names if n.endswith(STATE_SUFFIX)):
            if pattern.fullmatch(name[: -len(STATE_SUFFIX)]) and name[: -len(STATE_SUFFIX)] not in names:
                self._client.delete_collection(name)  # the state of a collection dropped earlier
        if self._read_state_in(self.physical, DIRTY) is not None:
            return  # a crashed writer's marks are settled by the recovery first (it may revive some)
        cutoff = models.Range(lt=moment - self._policy.grace_seconds)
        past = models.Filter(must=[models.FieldCondition(key=gen.DEAD_AT, range=cutoff)])
        self._client.delete(self.physical, points_selector=models.FilterSelector(filter=past), wait=True)

    def _expired(self, meta: dict[str, Any], moment: float) -> bool:
        retired = meta.get("kb_retired_at")
        if retired is not None:
            return moment - float(retired) > self._policy.grace_seconds
        created = meta.get("kb_created_at")
        mine = meta.get("kb_writer") == self._lease.token
        return not mine and (created is None or moment - float(created) > self._policy.lease_seconds)

    def ensure_payload_indexes(self, meta_fields: list[str]) -> None:
        existing = set(self._client.get_collection(self.physical).payload_schema or {})
        keywords = [*KEYWORD_INDEXES, *[f"meta.{f}" for f in meta_fields]]
        wanted = {name: models.PayloadSchemaType.KEYWORD for name in keywords}
        wanted |= {gen.GEN: models.PayloadSchemaType.INTEGER, gen.DEAD: models.PayloadSchemaType.INTEGER,
                   gen.DEAD_AT: models.PayloadSchemaType.FLOAT}  # fmt: skip
        for name, schema in wanted.items():
            if name not in existing:
                with warnings.catch_warnings():  # local mode warns that it has no payload indexes
                    warnings.filterwarnings("ignore", "Payload indexes have no effect")
                    self._client.create_payload_index(self.physical, name, field_schema=schema, wait=True)

    def optimize(self) -> None:
        """The server optimises segments in the background; nothing to do."""

    def flush(self) -> None:
        """Writes use ``wait=True``: acknowledged means applied to the WAL."""

    def close(self) -> None:
        if not self._is_staging:
            self._lease.close()
        if self._owns_client:
            self._client.close()

    # -- state and full rebuilds --------------------------------------------------------------------
    def read_state(self, name: str) -> dict[str, Any] | None:
        view = self._current_view()
        data = self._read_state_in(view.physical, name)
        if data is None and not self._is_staging and not self._client.collection_exists(view.physical):
            data = self._read_state_in(self._refresh(view, force=True).physical, name)  # dropped after a switch
        return data

    def write_state(self, name: str, data: dict[str, Any]) -> None:
        self._write_state_in(self._current_view().physical, name, data)

    def delete_state(self, name: str) -> None:
        collection = self._current_view().physical + STATE_SUFFIX
        if self._client.collection_exists(collection):
            selector = models.PointIdsList(points=[_state_id(name)])
            self._client.delete(collection, points_selector=selector, wait=True)

    def _read_state_in(self, physical: str, name: str) -> dict[str, Any] | None:
        try:
            records = self._client.retrieve(physical + STATE_SUFFIX, [_state_id(name)], with_payload=True)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise
        if not records:
            return None
        return json.loads((records[0].payload or {})["json"])

    def _write_state_in(self, physical: str, name: str, data: dict[str, Any]) -> None:
        point = models.PointStruct(id=_state_id(name), vector={}, payload={"name": name, "json": json.dumps(data)})
        self._client.upsert(self._state_collection(physical), points=[point], wait=True)

    def _read_view(self, physical: str) -> View:
        return View.of(physical, self._read_state_in(physical, GENERATION_STATE))

    def manifest_backend(self) -> ServerManifest:
        return ServerManifest(self)

    def _state_collection(self, physical: str | None = None) -> str:
        collection = (physical or self.physical) + STATE_SUFFIX
        if not self._client.collection_exists(collection):
            self._client.create_collection(collection, vectors_config={})
        return collection

    def staging(self, dimension: int, bm25: Bm25Encoder) -> ServerChunkStore:
        # Shares this store's client (local mode allows one client per folder) and writer lease.
        return ServerChunkStore(self._client, self.alias, dimension, bm25, self._options,
                                physical=_new_physical(self.alias), owns_client=False, policy=self._policy,
                                lease=self._lease)  # fmt: skip

    def promote(self, staging: ChunkStore) -> None:
        """Switch the alias to ``staging``; the replaced collection stays for the grace period."""
        assert isinstance(staging, ServerChunkStore)
        with self.transaction():
            old = self._view
            # Generations go on from the old collection's: a replica still at the old number sees the new
            # collection's later batches as unpublished, never as published.
            number = max(old.committed, self._last_gen, *self._aborted, 0)
            self._write_state_in(staging.physical, GENERATION_STATE, {"committed": number, "aborted": []})
            self._client.update_collection(old.physical, metadata={"kb_retired_at": leases.now()})
            self._client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)),
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=staging.physical, alias_name=self.alias)
                    ),
                ]
            )
            self._install(View(staging.physical, number))
            self._current_batch().view = self._view  # the rest of this batch reads and writes the new one
            self._last_gen, self._aborted = number, set()
            self._bm25 = staging.bm25

    def discard(self, staging: ChunkStore) -> None:
        assert isinstance(staging, ServerChunkStore)
        with self._lease.hold():
            self._drop(staging.physical)

    def describe(self) -> dict[str, Any]:
        view = self._view
        return {"backend": "qdrant-server", "collection": self.alias, "physical_collection": view.physical,
                "generation": view.committed}  # fmt: skip

    def _drop(self, physical: str) -> None:
        for name in (physical, physical + STATE_SUFFIX):
            if self._client.collection_exists(name):
                self._client.delete_collection(name)

    def _create_live(self, dimension: int) -> str:
        physical = _new_physical(self.alias)
        self._create(physical, dimension)
        self._client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=physical, alias_name=self.alias)
                )
            ]
        )
        return physical

    def _create(self, physical: str, dimension: int) -> None:
        on_disk = bool(self._options.get("on_disk", False))
        quantization = None
        if self._options.get("quantization") == Quantization.INT8:
            quantization = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        self._client.create_collection(
            physical,
            vectors_config={
                DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE, on_disk=on_disk)
            },
            sparse_vectors_config={
                BM25: models.SparseVectorParams(
                    modifier=models.Modifier.IDF, index=models.SparseIndexParams(on_disk=on_disk)
                )
            },
            shard_number=self._options.get("shards"),
            replication_factor=self._options.get("replication_factor"),
            on_disk_payload=on_disk,
            quantization_config=quantization,
            # Who made it and when: the orphan sweep drops an unpromoted one only when it is older than a lease
            # period and its writer no longer holds the lease.
            metadata={"kb_alias": self.alias, "kb_created_at": leases.now(), "kb_writer": self._lease.token},
        )


def connect(settings: Settings, local_path: str | None = None) -> QdrantClient:
    """A client for ``settings.qdrant_url`` ('local' = local mode in ``local_path``, ':memory:' = in memory)."""
    url = settings.qdrant_url
    try:
        if url == "local":
            if local_path is None:
                raise ConfigError("qdrant_url='local' needs an index folder to keep the local-mode data in")
            return guarded(QdrantClient(path=local_path))
        if url == ":memory:":
            return guarded(QdrantClient(location=":memory:"))
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"qdrant_url={url!r}: expected http(s)://host:port of a Qdrant server, 'local', ':memory:', "
                "or empty for the embedded engine"
            )
        api_key = settings.qdrant_api_key.get_secret_value() or None
        client = QdrantClient(url=url, api_key=api_key, timeout=int(settings.qdrant_timeout))
        client.get_collections()  # fail here, naming the server, rather than in the first query
        return client
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot reach the Qdrant server at {url} ({type(exc).__name__}: {exc}). Is it running, and is "
            "qdrant_api_key right? Leave qdrant_url empty to use the embedded engine."
        ) from exc


def collection_options(settings: Settings) -> dict[str, Any]:
    return {
        "shards": settings.qdrant_shards,
        "replication_factor": settings.qdrant_replication_factor,
        "on_disk": settings.qdrant_on_disk,
        "quantization": settings.qdrant_quantization,
    }


def _resolve_alias(client: QdrantClient, alias: str) -> str | None:
    for item in client.get_aliases().aliases:
        if item.alias_name == alias:
            return item.collection_name
    if client.collection_exists(alias):
        raise ConfigError(
            f"collection {alias!r} exists on the Qdrant server but is not a kb alias; kb keeps its points behind "
            "an alias so full rebuilds can switch atomically. Pick another qdrant_collection, or move the data "
            "with kb migrate."
        )
    return None


def _is_not_found(exc: Exception) -> bool:
    """A collection that does not exist, as local mode, the REST client and the gRPC client each say it."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError
        return getattr(code(), "name", "") == "NOT_FOUND"
    return isinstance(exc, (ValueError, KeyError)) and "not found" in str(exc).lower()


def _new_physical(alias: str) -> str:
    return f"{alias}-{uuid.uuid4().hex[:8]}"


def _state_id(name: str) -> str:
    return str(uuid.uuid5(_STATE_NAMESPACE, name))


def _sparse(point: StoredPoint) -> models.SparseVector:
    return models.SparseVector(indices=point.sparse.indices, values=point.sparse.values)


def _vector(leg: Leg) -> Any:
    if leg.name == BM25:
        return models.SparseVector(indices=leg.vector.indices, values=leg.vector.values)  # type: ignore[union-attr]
    return leg.vector


def _params(leg: Leg) -> models.SearchParams | None:
    """BM25's IDF over the readable chunks only (``leg.idf_corpus``); nothing for dense legs."""
    if leg.idf_corpus is None:
        return None
    return models.SearchParams(idf=models.IdfCorpusParams(corpus=_filter(leg.idf_corpus)))


def _scored(response: Any) -> list[ScoredChunk]:
    return [
        ScoredChunk(str(p.id), float(p.score), gen.strip(dict(p.payload or {})), dense_vector(p.vector))
        for p in response.points
    ]


def _filter(conditions: dict[str, list[Any]]) -> models.Filter | None:
    if not conditions:
        return None
    must: list[Any] = [
        models.HasIdCondition(has_id=list(values))
        if key == POINT_ID
        else models.FieldCondition(
            key=key,
            match=models.MatchValue(value=values[0]) if len(values) == 1 else models.MatchAny(any=list(values)),
        )
        for key, values in conditions.items()
    ]
    return models.Filter(must=must)


class ServerManifest:
    """The manifest on a Qdrant server: one point per document in the state collection, so a commit sends
    only what changed (O(changed documents): their entry points and one meta point) and every replica reads the
    same entries. A ``manifest.json`` state point written by an older kb is imported once."""

    KIND = "document"

    def __init__(self, store: ServerChunkStore) -> None:
        self._store = store

    def load(self) -> tuple[dict[str, DocumentEntry], float]:
        # No store lock: reading is safe alongside writes (it runs when a writer takes the lease, too).
        store = self._store
        collection = store.physical + STATE_SUFFIX
        documents: dict[str, DocumentEntry] = {}
        if not store.client.collection_exists(collection):
            return documents, 0.0
        legacy = store.read_state(LEGACY_MANIFEST_FILE)
        if legacy is not None:
            self._import(legacy)
        offset = None
        selector = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value=self.KIND))])
        while True:
            records, offset = store.client.scroll(
                collection, scroll_filter=selector, limit=1024, offset=offset, with_payload=True
            )
            for record in records:
                payload = record.payload or {}
                doc_id = str(payload.get("doc_id", ""))
                documents[doc_id] = parse_entry(payload.get("entry"), f"collection {collection}", doc_id)
            if offset is None:
                break
        meta = store.read_state("manifest-meta") or {}
        return documents, float(meta.get("updated_at", 0.0))

    def apply(self, put: dict[str, DocumentEntry], delete: list[str], updated_at: float) -> None:
        store = self._store
        points = [
            models.PointStruct(
                id=_entry_id(doc_id), vector={}, payload={"kind": self.KIND, "doc_id": doc_id, "entry": entry.as_dict()}
            )
            for doc_id, entry in put.items()
        ]
        with store.transaction():  # the writer lease, and after this batch's points (see Indexer._write)
            store.lease.check()
            collection = store._state_collection()
            for start in range(0, len(points), 512):
                store.client.upsert(collection, points=points[start : start + 512], wait=True)
            if delete:
                ids = [_entry_id(d) for d in delete]
                store.client.delete(collection, points_selector=models.PointIdsList(points=ids), wait=True)
            store.write_state("manifest-meta", {"updated_at": updated_at})

    def close(self) -> None:
        """The store owns the client."""

    def _import(self, legacy: dict[str, Any]) -> None:
        documents = legacy.get("documents")
        if not isinstance(documents, dict):
            raise IndexNotFoundError(
                f"{LEGACY_MANIFEST_FILE} in {self._store.physical}{STATE_SUFFIX}: field 'documents' is missing or not "
                "an object; rebuild the index with kb reindex --full"
            )
        where = f"{LEGACY_MANIFEST_FILE} in the state collection"
        entries = {d: parse_entry(e, where, d) for d, e in documents.items()}
        self.apply(entries, [], float(legacy.get("updated_at", 0.0) or 0.0))
        self._store.delete_state(LEGACY_MANIFEST_FILE)


def _entry_id(doc_id: str) -> str:
    return str(uuid.uuid5(_STATE_NAMESPACE, "document\0" + doc_id))
