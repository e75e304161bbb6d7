"""Server backend: a Qdrant server or cluster through ``qdrant-client`` (also its local mode).

The collection name users configure is an *alias*; the points live in a physical collection
``<alias>-<suffix>`` behind it, so a full rebuild fills a new physical collection and switches the alias
in one step (readers on other replicas never see a half-built index). ``index.json`` and
``manifest.json`` live in a small payload-only collection ``<physical>-state`` next to it, so every
replica and ``kb migrate`` read the same state.

    from qdrant_client import QdrantClient
    store = ServerChunkStore(QdrantClient(":memory:"), "handbook", dimension=384, bm25=Bm25Encoder())
"""

from __future__ import annotations

import json
import threading
import uuid
import warnings
from typing import Any

from pydantic import PrivateAttr
from qdrant_client import QdrantClient, models

from kb.errors import ConfigError, IndexNotFoundError
from kb.manifest import LEGACY_MANIFEST_FILE, DocumentEntry, parse_entry
from kb.settings import FusionMethod, Quantization, Settings
from kb.sparse import Bm25Encoder
from kb.store.base import (
    ACL_FIELD,
    BM25,
    DENSE,
    KEYWORD_INDEXES,
    ChunkStore,
    ScoredChunk,
    StoredPoint,
    dense_vector,
)
from kb.store.plan import Leg, QueryPlan

STATE_SUFFIX = "-state"
_STATE_NAMESPACE = uuid.UUID("0b8c3f0e-5d0a-4a57-9d7e-6c3e2b1f9a11")


class ServerChunkStore(ChunkStore):
    """Chunk store in a Qdrant server collection, same schema and query plan as the embedded engine."""

    alias: str
    physical: str
    _client: QdrantClient = PrivateAttr()
    _options: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    def __init__(
        self,
        client: QdrantClient,
        alias: str,
        dimension: int,
        bm25: Bm25Encoder,
        options: dict[str, Any] | None = None,
        physical: str | None = None,
    ) -> None:
        """Open the collection behind ``alias`` (created when missing); ``physical`` opens a staging one."""
        if physical is None:
            physical = _resolve_alias(client, alias)
        super().__init__(bm25=bm25, alias=alias, physical=physical or _new_physical(alias))
        self._client = client
        self._options = options or {}
        if physical is None:
            self._create(dimension)
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=self.physical, alias_name=alias)
                    )
                ]
            )
        elif not client.collection_exists(self.physical):
            self._create(dimension)

    @property
    def client(self) -> QdrantClient:
        return self._client

    # -- writes -------------------------------------------------------------------------------------
    def upsert(self, points: list[StoredPoint]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=p.id,
                vector={DENSE: p.dense, BM25: models.SparseVector(indices=p.sparse.indices, values=p.sparse.values)},
                payload=p.payload,
            )
            for p in points
        ]
        with self._lock:
            self._client.upsert(self.physical, points=structs, wait=True)

    def delete_documents(self, doc_ids: list[str]) -> None:
        if doc_ids:
            self._delete({"doc_id": list(doc_ids)})

    def set_acl(self, doc_id: str, acl: list[str]) -> None:
        selector = models.FilterSelector(filter=_filter({"doc_id": [doc_id]}))
        with self._lock:
            self._client.set_payload(self.physical, payload={ACL_FIELD: acl}, points=selector, wait=True)

    def delete_version(self, doc_id: str, doc_hash: str) -> None:
        self._delete({"doc_id": [doc_id], "doc_hash": [doc_hash]})

    def _delete(self, conditions: dict[str, list[Any]]) -> None:
        selector = models.FilterSelector(filter=_filter(conditions))
        with self._lock:
            self._client.delete(self.physical, points_selector=selector, wait=True)

    def transaction(self) -> threading.RLock:
        return self._lock

    # -- reads --------------------------------------------------------------------------------------
    # -- the query plan, in qdrant-client's request types -----------------------------------------------
    def _query_leg(self, leg: Leg, where: dict[str, list[Any]], with_vectors: bool) -> list[ScoredChunk]:
        with self._lock:
            response = self._client.query_points(
                self.physical,
                query=_vector(leg),
                using=leg.name,
                query_filter=_filter(where),
                search_params=_params(leg),
                limit=leg.limit,
                with_payload=True,
                with_vectors=[DENSE] if with_vectors else False,
            )
        return _scored(response)

    def _query_fused(self, plan: QueryPlan) -> list[ScoredChunk]:
        where = _filter(plan.where)
        fusion: Any = (
            models.FusionQuery(fusion=models.Fusion.DBSF)
            if plan.fusion is FusionMethod.DBSF
            else models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k, weights=plan.fusion_weights()))
        )
        with self._lock:
            response = self._client.query_points(
                self.physical,
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
        return _scored(response)

    def count(self, conditions: dict[str, list[Any]] | None = None) -> int:
        with self._lock:
            return int(self._client.count(self.physical, count_filter=_filter(conditions or {}), exact=True).count)

    def _scroll_page(
        self, conditions: dict[str, list[Any]], offset: Any, limit: int, vectors: Any, payload: Any
    ) -> tuple[list[Any], Any]:
        with self._lock:
            return self._client.scroll(
                self.physical,
                scroll_filter=_filter(conditions),
                limit=limit,
                offset=offset,
                with_payload=payload,
                with_vectors=vectors,
            )

    # -- maintenance --------------------------------------------------------------------------------
    def ensure_payload_indexes(self, meta_fields: list[str]) -> None:
        with self._lock:
            existing = set(self._client.get_collection(self.physical).payload_schema or {})
            for name in list(KEYWORD_INDEXES) + [f"meta.{f}" for f in meta_fields]:
                if name not in existing:
                    with warnings.catch_warnings():  # local mode warns that it has no payload indexes
                        warnings.filterwarnings("ignore", "Payload indexes have no effect")
                        self._client.create_payload_index(
                            self.physical, name, field_schema=models.PayloadSchemaType.KEYWORD, wait=True
                        )

    def optimize(self) -> None:
        """The server optimises segments in the background; nothing to do."""

    def flush(self) -> None:
        """Writes use ``wait=True``: acknowledged means applied to the WAL."""

    def close(self) -> None:
        with self._lock:
            self._client.close()

    # -- state and full rebuilds --------------------------------------------------------------------
    def read_state(self, name: str) -> dict[str, Any] | None:
        collection = self.physical + STATE_SUFFIX
        with self._lock:
            if not self._client.collection_exists(collection):
                return None
            records = self._client.retrieve(collection, [_state_id(name)], with_payload=True)
        if not records:
            return None
        return json.loads((records[0].payload or {})["json"])

    def write_state(self, name: str, data: dict[str, Any]) -> None:
        point = models.PointStruct(id=_state_id(name), vector={}, payload={"name": name, "json": json.dumps(data)})
        collection = self._state_collection()
        with self._lock:
            self._client.upsert(collection, points=[point], wait=True)

    def delete_state(self, name: str) -> None:
        collection = self.physical + STATE_SUFFIX
        with self._lock:
            if self._client.collection_exists(collection):
                selector = models.PointIdsList(points=[_state_id(name)])
                self._client.delete(collection, points_selector=selector, wait=True)

    def manifest_backend(self) -> ServerManifest:
        return ServerManifest(self)

    def _state_collection(self) -> str:
        collection = self.physical + STATE_SUFFIX
        with self._lock:
            if not self._client.collection_exists(collection):
                self._client.create_collection(collection, vectors_config={})
        return collection

    def staging(self, dimension: int, bm25: Bm25Encoder) -> ServerChunkStore:
        # Shares this store's client: local mode allows one client per folder, and promote() adopts it.
        return ServerChunkStore(
            self._client, self.alias, dimension, bm25, self._options, physical=_new_physical(self.alias)
        )

    def promote(self, staging: ChunkStore) -> None:
        assert isinstance(staging, ServerChunkStore)
        with self._lock:
            old = self.physical
            self._client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)),
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=staging.physical, alias_name=self.alias)
                    ),
                ]
            )
            self.physical = staging.physical
            self._bm25 = staging.bm25
            self._drop(old)

    def discard(self, staging: ChunkStore) -> None:
        assert isinstance(staging, ServerChunkStore)
        with self._lock:
            self._drop(staging.physical)

    def describe(self) -> dict[str, Any]:
        return {"backend": "qdrant-server", "collection": self.alias, "physical_collection": self.physical}

    def _drop(self, physical: str) -> None:
        for name in (physical, physical + STATE_SUFFIX):
            if self._client.collection_exists(name):
                self._client.delete_collection(name)

    def _create(self, dimension: int) -> None:
        on_disk = bool(self._options.get("on_disk", False))
        quantization = None
        if self._options.get("quantization") == Quantization.INT8:
            quantization = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        with self._lock:
            self._client.create_collection(
                self.physical,
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
            )


def connect(settings: Settings, local_path: str | None = None) -> QdrantClient:
    """A client for ``settings.qdrant_url`` ('local' = local mode in ``local_path``, ':memory:' = in memory)."""
    url = settings.qdrant_url
    try:
        if url == "local":
            if local_path is None:
                raise ConfigError("qdrant_url='local' needs an index folder to keep the local-mode data in")
            return QdrantClient(path=local_path)
        if url == ":memory:":
            return QdrantClient(location=":memory:")
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


def _new_physical(alias: str) -> str:
    return f"{alias}-{uuid.uuid4().hex[:8]}"


def _state_id(name: str) -> str:
    return str(uuid.uuid5(_STATE_NAMESPACE, name))


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
        ScoredChunk(str(p.id), float(p.score), dict(p.payload or {}), dense_vector(p.vector)) for p in response.points
    ]


def _filter(conditions: dict[str, list[Any]]) -> models.Filter | None:
    if not conditions:
        return None
    must: list[Any] = [
        models.FieldCondition(
            key=key,
            match=models.MatchValue(value=values[0]) if len(values) == 1 else models.MatchAny(any=list(values)),
        )
        for key, values in conditions.items()
    ]
    return models.Filter(must=must)


class ServerManifest:
    """The manifest on a Qdrant server: one point per document in the state collection, so a commit sends
    only what changed and every replica reads the same entries. A ``manifest.json`` state point written by an
    older kb is imported once."""

    KIND = "document"

    def __init__(self, store: ServerChunkStore) -> None:
        self._store = store

    def load(self) -> tuple[dict[str, DocumentEntry], float]:
        store = self._store
        collection = store.physical + STATE_SUFFIX
        documents: dict[str, DocumentEntry] = {}
        with store.transaction():
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
        collection = store._state_collection()
        points = [
            models.PointStruct(
                id=_entry_id(doc_id), vector={}, payload={"kind": self.KIND, "doc_id": doc_id, "entry": entry.as_dict()}
            )
            for doc_id, entry in put.items()
        ]
        with store.transaction():
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
