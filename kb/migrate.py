"""``kb migrate``: copy an embedded knowledge base into a Qdrant server collection without re-embedding.

    from kb.migrate import migrate
    report = migrate("indexes/handbook", "http://qdrant:6333")
    print(report.points, report.verified)

Points (dense + BM25 vectors, payload), ``index.json`` and the manifest are written into a new physical
collection; only when the copy's counts and document versions equal the source's does the alias switch
to it, so a failed or interrupted migration leaves the target as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.errors import ConfigError
from kb.manifest import INDEX_FILE, IndexInfo, Manifest
from kb.settings import Settings
from kb.sources import SOURCES_STATE
from kb.store import LOCAL_MODE_DIR, collection_name
from kb.store.base import ChunkStore
from kb.store.server import ServerChunkStore, ServerPolicy, collection_options, connect

if TYPE_CHECKING:
    from kb.knowledge_base import KnowledgeBase


@dataclass
class MigrationReport:
    source: str
    target: str
    collection: str
    points: int = 0
    documents: int = 0
    verified: bool = False
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    def how_to_use(self) -> str:
        """The settings that point an index at the copy: a server URL as given; a local-mode copy is read by the
        index folder whose ``qdrant-local`` it is, with ``qdrant_url = "local"`` (the only local form it takes)."""
        names = f'qdrant_collection = "{self.collection}"'
        if not self.target.startswith("local:"):
            return (
                f'set qdrant_url = "{self.target}" and {names} in {self.source}/kb.toml '
                "(or KB_QDRANT_URL / KB_QDRANT_COLLECTION)"
            )
        path = Path(self.target.removeprefix("local:"))
        if path.name == LOCAL_MODE_DIR:
            return f'set qdrant_url = "local" and {names} in {path.parent}/kb.toml'
        return (
            f"local mode reads an index folder's {LOCAL_MODE_DIR}/: move {path} to INDEX/{LOCAL_MODE_DIR} and set "
            f'qdrant_url = "local" and {names} in INDEX/kb.toml'
        )


def migrate(
    source: str | Path,
    url: str,
    collection: str = "",
    api_key: str = "",
    replace: bool = False,
    batch: int = 256,
    client: Any | None = None,
) -> MigrationReport:
    """Copy the embedded index at ``source`` into ``collection`` (default: the folder's name) at ``url``.

    ``url`` is a Qdrant server (``http://qdrant:6333``) or ``local:PATH`` (qdrant-client local mode in PATH,
    e.g. the ``qdrant-local`` folder of an index configured with ``qdrant_url = "local"``).

    Refuses a target collection that already holds points unless ``replace``; the copy is verified
    (point count and every document version) before it goes live. The target's writer lease is held from the
    first look at it to the switch, so no reindex on another host writes meanwhile; replicas reading the
    collection follow the switch (the replaced collection is dropped after ``qdrant_grace_seconds``).
    ``client``: a ``QdrantClient`` to use instead of connecting to ``url`` (not closed here).
    """
    from kb.knowledge_base import KnowledgeBase

    started = time.perf_counter()
    folder = Path(source)
    if not IndexInfo.exists(folder):
        raise ConfigError(f"{folder}: no {INDEX_FILE}; --from must be an embedded kb index folder")
    with KnowledgeBase.open(folder, qdrant_url="") as kb:  # takes the writer lock: nothing changes meanwhile
        local_path = url.removeprefix("local:") if url.startswith("local:") else None
        target_settings = Settings.load(
            folder, qdrant_url="local" if local_path else url, qdrant_api_key=api_key, qdrant_collection=collection
        )
        name = collection_name(folder, target_settings)
        report = MigrationReport(str(folder), url, name)
        dimension = int(kb.info.embedder["dimension"])
        bm25 = kb.store.bm25
        owned = client is None
        connection = connect(target_settings, local_path) if client is None else client
        target = ServerChunkStore(connection, name, dimension, bm25, collection_options(target_settings),
                                  owns_client=owned, policy=ServerPolicy.of(target_settings))  # fmt: skip
        try:
            with target.lease.hold():  # no writer on another host from the first look to the switch
                _copy_and_switch(kb, target, report, url, replace, batch)
        finally:
            target.close()
    report.seconds = time.perf_counter() - started
    return report


def _copy_and_switch(
    kb: KnowledgeBase, target: ServerChunkStore, report: MigrationReport, url: str, replace: bool, batch: int
) -> None:
    name = report.collection
    existing = target.count()
    if existing and not replace:
        raise ConfigError(
            f"collection {name!r} at {url} already holds {existing:,} points; pass --replace to "
            "swap it for this index (atomic: readers see the old or the new one), or pick --collection"
        )
    staging = target.staging(int(kb.info.embedder["dimension"]), kb.store.bm25)
    try:
        report.points = _copy(kb.store, staging, batch)
        for state in (INDEX_FILE, SOURCES_STATE):
            data = kb.store.read_state(state)
            if data is not None:
                staging.write_state(state, data)
        copied = Manifest(staging.manifest_backend())
        copied.commit(put=kb.manifest.snapshot())
        if copied.snapshot() != kb.manifest.snapshot():
            raise ConfigError(
                f"the manifest copied into {name!r} differs from the source's; the target was left unchanged"
            )
        staging.ensure_payload_indexes(kb.settings.indexed_fields)
        report.mismatches = _compare(kb.store, staging)
        if report.mismatches:
            raise ConfigError(
                f"copy into {name!r} does not match the source ({len(report.mismatches)} differences, first: "
                f"{report.mismatches[0]}); the target was left unchanged"
            )
    except BaseException:
        target.discard(staging)
        raise
    with target.transaction():
        target.promote(staging)
    report.verified = True
    report.documents = len(kb.manifest.documents)


def _copy(source: ChunkStore, target: ChunkStore, batch: int) -> int:
    copied, pending = 0, []
    for point in source.scroll_points(batch):
        pending.append(point)
        if len(pending) >= batch:
            target.upsert(pending)
            copied, pending = copied + len(pending), []
    target.upsert(pending)
    return copied + len(pending)


def _compare(source: ChunkStore, target: ChunkStore) -> list[str]:
    """Differences between two stores: count, and points per (document, version)."""
    out: list[str] = []
    have, want = target.count(), source.count()
    if have != want:
        out.append(f"points: source {want}, target {have}")
    want, have = source.versions(), target.versions()
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            out.append(f"{key[0]} @ {key[1][:12]}: source {want.get(key, 0)} points, target {have.get(key, 0)}")
    return out
