"""``KnowledgeBase``: the one object callers use. The CLI, the HTTP API and the demo are thin faces over it.

from kb import KnowledgeBase
kb = KnowledgeBase.open("indexes/handbook")           # embedded Qdrant: no server to start
kb.add_source("runbooks", "~/src/runbooks", url="https://git.example.com/ops/runbooks/blob/main/{path}")
kb.reindex(source="runbooks")
for hit in kb.search("how do I rotate the API key?", k=5, filters={"product": "billing"}):
    print(hit.score, hit.doc_id, hit.header_path, hit.span, hit.text[:80])
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.acl import PUBLIC, AclDefault, Principal, widens
from kb.chunking import HeadingChunker
from kb.citations import Answer
from kb.document import Span
from kb.embedding import (
    Embedder,
    ModelIdentity,
    build_embedder,
    max_seq_length,
    model_identity,
    resolve_model_path,
)
from kb.errors import (
    ConfigError,
    EmbedderMismatchError,
    IndexDamagedError,
    IndexLockedError,
    IndexNotFoundError,
    KbError,
    PartialReindexError,
    SourceError,
)
from kb.indexing import Damage, Indexer, IngestReport, Journal, Progress, check_store, plan_source
from kb.indexing.failures import ParseFailures
from kb.indexing.plan import IndexPlan
from kb.locking import IndexLock
from kb.manifest import INDEX_FILE, DocumentEntry, IndexInfo, Manifest
from kb.records import ChunkRecord
from kb.retrieval import HybridSearch
from kb.settings import DEFAULT_EMBEDDER_BACKEND, EmbedderBackend, FusionMethod, RetrievalMode, Settings
from kb.sources import NODES_SOURCE, DocumentSource, SourceKind, SourceRegistry
from kb.sparse import Bm25Encoder
from kb.store import LOCAL_MODE_DIR, open_store
from kb.store.base import ChunkStore, FilterValue
from kb.tokens import TokenCounter

if TYPE_CHECKING:  # the answer path and the LlamaIndex faces load on first use: `kb search` starts without them
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.vector_stores.types import BasePydanticVectorStore

    from kb.answering import AnswerEngine, AnswerEvent
    from kb.llamaindex.query_engine import CitedQueryEngine
    from kb.llamaindex.retriever import HybridRetriever

DEFAULT_INDEX = Path("indexes/default")
LEGACY_DIRTY_FILE = "DIRTY"
log = logging.getLogger(__name__)

# Index folders open in this process (the embedded engine allows one holder; say so plainly).
_OPEN: dict[Path, tuple[weakref.ref[KnowledgeBase], int]] = {}
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk, where it comes from, and its score (derived from its ChunkRecord)."""

    score: float
    doc_id: str
    title: str
    header_path: str
    span: Span
    text: str
    node_id: str
    url: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    rerank_score: float | None = None  # the cross-encoder's 0..1 relevance, when reranked
    source: str = ""
    path: str = ""

    @classmethod
    def of(cls, node_id: str, score: float, record: ChunkRecord) -> Hit:
        return cls(
            score=score,
            doc_id=record.doc_id,
            title=record.title,
            header_path=record.heading,
            span=record.span,
            text=record.text,
            node_id=node_id,
            url=record.url,
            metadata=record.meta,
            source=record.source,
            path=record.path,
        )


@dataclass(frozen=True)
class Status:
    path: str
    store: dict[str, Any]
    reranker: dict[str, Any]
    documents: int
    chunks: int
    disk_bytes: int
    embedder: dict[str, Any]
    chunking: dict[str, Any]
    updated_at: float
    settings: dict[str, Any]
    sources: list[dict[str, Any]] = field(default_factory=list)
    damage: str = ""
    legacy_documents: int = 0


class KnowledgeBase:
    """A knowledge base in an index folder: sources of documents, indexed, searchable, answerable."""

    def __init__(
        self,
        path: Path,
        settings: Settings,
        store: ChunkStore,
        info: IndexInfo,
        lock: IndexLock | None = None,
        incompatible: str | None = None,
    ) -> None:
        self.path = path
        self.settings = settings
        self.store = store
        self.info = info
        self._held = _Held(store, Manifest(store.manifest_backend()), lock)
        self.journal = Journal(store, self.manifest, path / LEGACY_DIRTY_FILE)
        self.registry = SourceRegistry(store, settings.sources, path)
        self.damage = Damage()
        self._lock = lock
        self._incompatible = incompatible  # why only a full rebuild may touch this index, if so
        self._embedder: Embedder | None = None
        self._embed_model: BaseEmbedding | None = None
        self.identity = model_identity(settings.embedder_model, _backend(settings, info))
        self._llm: LLM | None = None
        self._llm_built = False
        self._reranker: BaseNodePostprocessor | None = None
        self._reranker_built = False
        self._source_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.reranker_note = ""  # why the reranking stage is off, when it is
        self._repairing: list[str] = []
        store.on_foreign_add(self._record_nodes, self._default_acl())
        self._finalizer = weakref.finalize(self, _release, self._held, path.resolve(), id(self))

    @property
    def manifest(self) -> Manifest:
        return self._held.manifest

    @manifest.setter
    def manifest(self, manifest: Manifest) -> None:
        self._held.manifest = manifest

    # -- lifecycle -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path = DEFAULT_INDEX,
        settings: Settings | None = None,
        for_rebuild: bool = False,
        create: bool = True,
        client: Any | None = None,
        **overrides: Any,
    ) -> KnowledgeBase:
        """Open the index at ``path``, creating it when the folder holds none (unless ``create=False``).

        Raises :class:`IndexNotFoundError` for a missing index with ``create=False`` (reading commands),
        :class:`EmbedderMismatchError` when the index was built with another embedder than the settings name
        (with ``for_rebuild`` it opens, and only ``reindex(full=True)`` works), and :class:`IndexLockedError`,
        naming the holder, when another process — or another open object in this one — has it.
        After a crash, unfinished work is rolled back or forward here, before anything is read; a store that
        lost chunks the manifest names is reported in ``damage`` (see ``reindex(repair=True)``).
        """
        folder = Path(path)
        missing = IndexNotFoundError(
            f"no index at {folder}; create it with: kb ingest DOCS --kb {folder} (or kb source add NAME DOCS "
            f"--kb {folder} && kb reindex --all --kb {folder})"
        )
        settings = settings or Settings.load(folder, **overrides)
        # Embedded (and local mode): the folder decides. A server index may be named by KB_QDRANT_URL alone, with
        # nothing in its folder: the store decides below, from the collection.
        on_disk = client is None and settings.qdrant_url in ("", "local")
        if not create and on_disk and not _index_exists(folder):
            raise missing  # before the lock and the store: reading a missing index leaves nothing behind
        identity = model_identity(settings.embedder_model)
        _check_chunk_cap(settings)
        key = folder.resolve()
        with _OPEN_LOCK:
            holder = _OPEN.get(key)
            if holder is not None and holder[0]() is not None:
                raise IndexLockedError(
                    f"{folder} is already open in this process (a KnowledgeBase that was not closed); use that "
                    "object, or call its close() first (or open it with 'with KnowledgeBase.open(...) as kb:')"
                )
            lock = IndexLock(folder).acquire()
            store: ChunkStore | None = None
            try:
                # client: a QdrantClient the caller owns (replicas sharing one connection); selects the server backend
                store = open_store(folder, settings, identity.dimension, _bm25(settings.bm25_identity()), client)
                incompatible = None
                if IndexInfo.exists(store):
                    info = IndexInfo.read(store)
                    store.use_bm25(_bm25(info.bm25))
                    identity = identity.run_by(_backend(settings, info))
                    try:
                        _check_compatible(folder, info, identity, settings)
                    except (EmbedderMismatchError, ConfigError) as exc:
                        if not for_rebuild:
                            raise
                        incompatible = str(exc)
                else:
                    if not create:
                        raise missing  # the server has no such collection: reading must not create one
                    identity = identity.run_by(_backend(settings, None))
                    info = IndexInfo(identity.as_dict(), settings.chunking_identity(), settings.bm25_identity())
                    info.write(store)
                kb = cls(folder, settings, store, info, lock, incompatible)
                kb.identity = identity
            except BaseException:
                if store is not None:
                    store.close()
                lock.release()
                raise
            _OPEN[key] = (weakref.ref(kb), id(kb))
        try:
            kb._recover()
        except BaseException:
            kb.close()
            raise
        return kb

    def _recover(self) -> None:
        unstamped = sum(1 for entry in self.manifest.documents.values() if entry.acl is None)
        if unstamped:
            log.warning(
                "%s: %d documents were indexed before access control and are readable only by trusted "
                "callers until the next reindex stamps their ACL (payload only, no re-embedding).",
                self.path,
                unstamped,
            )
        if self.journal.dirty():
            self.journal.recover()
        self.damage = check_store(self.store, self.manifest)
        if self.damage.damaged:
            log.warning(self.damage.describe(str(self.path)))

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parts ---------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The embedder this index is built with (OpenVINO, ONNX Runtime or torch; see ``embedder_backend``)."""
        if self._embedder is None:
            self._embedder = self._build_embedder(self.identity)
        return self._embedder

    @property
    def embed_model(self) -> BaseEmbedding:
        """The index's embedder as a LlamaIndex ``BaseEmbedding`` (:class:`kb.llamaindex.embedding.EmbeddingModel`)."""
        if self._embed_model is None or self._embed_model.embedder is not self.embedder:
            from kb.llamaindex.embedding import EmbeddingModel

            self._embed_model = EmbeddingModel(self.embedder)
        return self._embed_model

    @property
    def vector_store(self) -> BasePydanticVectorStore:
        """The chunk store as a LlamaIndex ``BasePydanticVectorStore`` (:class:`~kb.llamaindex.ChunkVectorStore`)."""
        return self.store.as_vector_store()

    def _build_embedder(self, identity: ModelIdentity) -> Embedder:
        s = self.settings
        return build_embedder(s.embedder_model, identity.backend, s.embed_batch_size, s.embedder_threads)

    def chunker(self) -> HeadingChunker:
        counter = TokenCounter.for_model(self.embedder.model_path)
        return HeadingChunker(
            counter, max_tokens=self.settings.chunk_max_tokens, min_tokens=self.settings.chunk_min_tokens
        )

    @property
    def llm(self) -> LLM | None:
        """The generator the settings name (built on first use); ``None`` means extractive answers."""
        if not self._llm_built:
            from kb.llm import build_llm

            self._llm = build_llm(self.settings)
            self._llm_built = True
        return self._llm

    @property
    def reranker(self) -> BaseNodePostprocessor | None:
        """The cross-encoder stage (loaded on first use), or ``None`` when off or unavailable (see
        ``reranker_note``): kb then answers from the fused ranking."""
        if not self._reranker_built:
            from kb.reranking import load_reranker

            s = self.settings
            self._reranker, self.reranker_note = load_reranker(
                s.reranker_model,
                s.reranker_top_k,
                s.reranker_backend,
                s.reranker_revision or None,
                s.reranker_max_tokens,
                s.reranker_blend,
            )
            if self.reranker_note:
                log.warning(self.reranker_note)  # once per KnowledgeBase
            self._reranker_built = True
        return self._reranker

    def use_reranker(self, reranker: BaseNodePostprocessor | None) -> None:
        """Rerank answers and ``search(rerank=True)`` with ``reranker`` (kb's cross-encoder or any LlamaIndex node
        postprocessor), or not at all with ``None``."""
        self._reranker, self._reranker_built = reranker, True
        self.reranker_note = "" if reranker is not None else "reranking turned off by use_reranker(None)"

    def use_llm(self, llm: LLM | None) -> None:
        """Answer with ``llm`` (any LlamaIndex LLM), or extractively with ``None``."""
        self._llm, self._llm_built = llm, True

    def answer_engine(
        self, filters: dict[str, FilterValue] | None = None, user: Principal | None = None
    ) -> AnswerEngine:
        from kb.answering import AnswerEngine

        search = self.hybrid_search(self.settings.answer_sources, filters, user=user)
        counter = TokenCounter.for_model(self.embedder.model_path)
        return AnswerEngine(search, self.embedder, self.settings, self.llm, self.reranker, counter)

    def query_engine(
        self, filters: dict[str, FilterValue] | None = None, user: Principal | None = None
    ) -> CitedQueryEngine:
        """A LlamaIndex query engine that answers with citations, from what ``user`` may read."""
        from kb.llamaindex.query_engine import CitedQueryEngine

        return CitedQueryEngine(self.answer_engine(filters, user))

    def hybrid_search(
        self,
        k: int = 5,
        filters: dict[str, FilterValue] | None = None,
        mode: RetrievalMode | str | None = None,
        fusion: FusionMethod | str | None = None,
        user: Principal | None = None,
    ) -> HybridSearch:
        """The search over the documents ``user`` may read (everything when ``None``): records and timings."""
        return HybridSearch(self.store, self.embedder, self.settings, k, filters, mode, fusion, user=user)

    def retriever(
        self,
        k: int = 5,
        filters: dict[str, FilterValue] | None = None,
        mode: RetrievalMode | str | None = None,
        fusion: FusionMethod | str | None = None,
        user: Principal | None = None,
    ) -> HybridRetriever:
        """:meth:`hybrid_search` as a LlamaIndex ``BaseRetriever`` (:class:`~kb.llamaindex.HybridRetriever`)."""
        from kb.llamaindex.retriever import HybridRetriever

        return HybridRetriever(self.hybrid_search(k, filters, mode, fusion, user))

    # -- sources -------------------------------------------------------------------------------------
    @property
    def sources(self) -> dict[str, DocumentSource]:
        """The index's sources by name (stored ones and those kb.toml declares)."""
        return dict(self.registry.sources)

    def add_source(self, name: str, path: str | Path, **options: Any) -> DocumentSource:
        """Register a folder as source ``name`` (options: include, exclude, acl, acl_file, metadata, url,
        anchor_style, asciidoc_patterns). Nothing is indexed until ``reindex(source=name)``."""
        if name in self.registry.sources:
            raise ConfigError(f"source {name!r} exists already ({self.registry.sources[name].path}); "
                              "change it with update_source (kb source set), or pick another name")  # fmt: skip
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{path}: not a folder; a source is a folder of documents")
        other = self.registry.for_folder(folder)
        if other is not None:
            raise ConfigError(f"{folder} is already source {other.name!r}; one folder is one source")
        return self.registry.put(_validated(name=name, path=str(folder), **options))

    def update_source(self, name: str, **changes: Any) -> DocumentSource:
        """Change a source's settings. A new ``path`` (the folder moved) re-embeds nothing; a new URL template
        or metadata rewrites payloads on the next reindex, vectors reused; a new ``acl`` is a payload update."""
        current = self.registry.get(name)
        if current.origin == "kb.toml":
            raise ConfigError(f"source {name!r} is declared in {self.path}/kb.toml; change it there")
        if "path" in changes and not Path(changes["path"]).expanduser().is_dir():
            raise ConfigError(f"{changes['path']}: not a folder")
        data = {**current.model_dump(), **changes}
        return self.registry.put(_validated(**data))

    def remove_source(self, name: str) -> int:
        """Delete source ``name`` and every document that came from it (nothing else); returns documents deleted."""
        source = self.registry.get(name)
        if source.origin == "kb.toml":
            raise ConfigError(f"source {name!r} is declared in {self.path}/kb.toml; remove it there first")
        with self._writing_source(name):
            doc_ids = sorted(self.manifest.of_source(name))
            if doc_ids:
                with self.journal.writing(), self.store.transaction():
                    self.manifest.commit(delete=doc_ids)
                    self.store.delete_documents(doc_ids)
            self.registry.remove(name)
            ParseFailures.load(self.store, self.settings).forget(name)
        return len(doc_ids)

    def rename_source(self, old: str, new: str) -> IngestReport:
        """Rename a source: its documents get ``new:path`` ids, their vectors reused (nothing re-embedded)."""
        source = self.registry.get(old)
        if source.kind is not SourceKind.FOLDER:
            raise ConfigError(f"source {old!r} has no folder to re-read; only folder sources can be renamed")
        if new in self.registry.sources:
            raise ConfigError(f"source {new!r} exists already")
        with self._writing_source(old):
            # Brought up to date first: a document whose file cannot be read or parsed now stays at its indexed
            # version under its old id; the rename re-reads every file under new ids and would drop it.
            current = self._run(source, sync=True, verify=True)  # read every file: a stat says nothing of that
            if current.refused_deletes:
                raise ConfigError(f"source {old!r} was not renamed: {current.refused_deletes}")
            documents = self.manifest.documents
            stuck = [
                s.doc_id for s in current.skipped
                if s.doc_id in documents or (s.doc_id.endswith("/") and any(d.startswith(s.doc_id) for d in documents))
            ]  # fmt: skip
            if stuck:
                raise ConfigError(
                    f"source {old!r} has documents whose files cannot be read or parsed now (e.g. "
                    f"{', '.join(stuck[:3])}; kb reindex {old} says why): a rename re-reads every file and would "
                    "drop their indexed versions. Fix them, then rename"
                )
        rules_file = self.registry.read_rules_file(old)
        renamed = self.registry.put(_validated(**{**source.model_dump(), "name": new, "origin": "api"}))
        with self._writing_source(old), self._writing_source(new):
            try:
                plan = plan_source(
                    renamed, self.manifest, self.settings, sync=True, adopt_from=old, rules_file_before=rules_file
                )
            except KbError:
                self.registry.remove(new)
                raise
            report = self._apply(plan)
            self.registry.note_rules_file(new, plan.policy.rules_to_keep)
            leftover = sorted(self.manifest.of_source(old))
            if leftover:  # indexed, but their files are gone: what a reindex of the old source would delete
                with self.journal.writing(), self.store.transaction():
                    self.manifest.commit(delete=leftover)
                    self.store.delete_documents(leftover)
                report.deleted.extend(leftover)
            self.registry.remove(old)
            ParseFailures.load(self.store, self.settings).forget(old)  # the new name re-learns its failures
        return report

    def source_for_folder(self, folder: str | Path, acl: list[str] | None = None,
                          metadata: dict[str, Any] | None = None) -> DocumentSource:  # fmt: skip
        """The source of ``folder``: the one registered for it; else the source named after the folder (its base
        name) when that source's own folder no longer exists — the folder moved, as a CI checkout does from one
        run to the next, and nothing is re-embedded; else a new source under that name (``docs-2`` if taken).
        A given ``acl`` or ``metadata`` is stored with the source and stays until changed explicitly."""
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{folder}: not a folder; pass the folder that holds the documents")
        source = self.registry.for_folder(path)
        if source is None:
            named = self.registry.sources.get(self.registry.name_for_folder(path, unique=False))
            if named is not None and named.kind is SourceKind.FOLDER and not named.folder.is_dir():
                log.warning("source %r moved from %s to %s", named.name, named.path, path.resolve())
                source = self.registry.put(named.model_copy(update={"path": str(path)}))
        changes = {k: v for k, v in (("acl", acl), ("metadata", metadata)) if v is not None}
        if source is None:
            return self.registry.put(_validated(name=self.registry.name_for_folder(path), path=str(path), **changes))
        changed = _validated(**{**source.model_dump(), **changes})
        if changed == source:
            return source
        if source.origin == "kb.toml":
            raise ConfigError(f"source {source.name!r} is declared in kb.toml; change its acl/metadata there")
        return self.registry.put(changed)

    # -- operations ----------------------------------------------------------------------------------
    def ingest(
        self,
        folder: str | Path,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        acl: list[str] | None = None,
    ) -> IngestReport:
        """Add new and changed documents under ``folder`` (its source: see :meth:`source_for_folder`).

        Documents the folder no longer has are kept; use :meth:`reindex` to mirror it. ``acl`` (group names)
        becomes the source's ACL: a ceiling its documents' own ACLs can narrow but never widen."""
        self._require_incremental()
        source = self.source_for_folder(folder, acl, metadata)
        with self._writing_source(source.name):
            return self._run(source, sync=False, progress=progress)

    def reindex(
        self,
        folder: str | Path | None = None,
        full: bool = False,
        dry_run: bool = False,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        acl: list[str] | None = None,
        *,
        source: str | None = None,
        allow_mass_delete: bool = False,
        repair: bool = False,
        verify: bool = False,
    ) -> IngestReport:
        """Make the index mirror a source: add new, replace changed, delete removed documents.

        Which source: ``source="runbooks"``; or ``folder`` (a folder → its source, registered on first use;
        a source name works too); neither → every folder source (``kb reindex --all``). ``dry_run`` only
        plans. Deleting more than ``max_delete_fraction`` of a source is refused (the report says why)
        unless ``allow_mass_delete``. ``repair`` first drops what a damaged store lost, then re-reads and
        re-embeds only that. ``verify`` hashes every file (no size/mtime fast path). ``full`` rebuilds every
        source into a new store, swapped in when complete (after changing the embedder or chunk settings).
        """
        targets = self._targets(folder, source, acl, metadata)
        if full:
            return self._rebuild(targets, dry_run, progress, allow_mass_delete)
        self._require_incremental()
        if repair:
            self._drop_damaged({s.name for s in targets})
        elif self.damage.damaged and not dry_run:
            raise IndexDamagedError(self.damage.describe(str(self.path)))
        report = IngestReport(dry_run=dry_run)
        with ExitStack() as held:
            for target in targets:
                held.enter_context(self._writing_source(target.name))
            failed: list[str] = []
            for target in targets:
                try:
                    part = self._run(target, True, progress, dry_run, allow_mass_delete, verify)
                except (SourceError, ConfigError) as exc:
                    if len(targets) == 1:
                        raise
                    failed.append(f"source {target.name!r}: {exc}")  # one source's problem is not the others'
                    continue
                report.merge(part)
            if repair:
                report.repaired = sorted(set(self._repairing) & set(report.added))
                self._repairing = []
                self.damage = check_store(self.store, self.manifest)
        if failed:
            done = len(targets) - len(failed)
            verb = "planned" if dry_run else "reindexed"
            raise PartialReindexError(
                "; ".join(failed) + f" (the other {done} sources were {verb}: {report.summary()})", report
            )
        return report

    def reindex_in_background(self, folder: str | Path | None = None, **options: Any) -> ReindexJob:
        """Run :meth:`reindex` in a thread; this object keeps answering queries meanwhile."""
        return ReindexJob(lambda progress: self.reindex(folder, progress=progress, **options))

    def _targets(
        self, folder: str | Path | None, source: str | None, acl: list[str] | None, metadata: dict[str, Any] | None
    ) -> list[DocumentSource]:
        if source is not None:
            target = self.registry.get(source)
            if acl is not None or metadata is not None:
                target = self.update_source(
                    source, **{k: v for k, v in (("acl", acl), ("metadata", metadata)) if v is not None}
                )
            return [target]
        if folder is not None:
            if not Path(folder).is_dir() and str(folder) in self.registry.sources:
                return self._targets(None, str(folder), acl, metadata)
            return [self.source_for_folder(folder, acl, metadata)]
        folders = [s for s in self.registry.sources.values() if s.kind is SourceKind.FOLDER]
        if not folders:
            raise ConfigError(f"{self.path} has no sources yet: kb source add NAME FOLDER, or kb reindex FOLDER")
        return folders

    def _run(
        self,
        source: DocumentSource,
        sync: bool,
        progress: Progress | None = None,
        dry_run: bool = False,
        allow_mass_delete: bool = False,
        verify: bool = False,
    ) -> IngestReport:
        failures = ParseFailures.load(self.store, self.settings)
        rules_file = self.registry.read_rules_file(source.name)
        plan = plan_source(
            source, self.manifest, self.settings, sync, verify, allow_mass_delete, failures=failures,
            rules_file_before=rules_file,
        )  # fmt: skip
        if dry_run:
            return _dry_report(plan)
        report = self._apply(plan, progress)
        failures.record(plan, report)
        self.registry.record_run(
            source.name,
            report.summary(),
            [{"doc_id": s.doc_id, "reason": s.reason} for s in report.skipped],
            plan.policy.rules_to_keep,
        )
        return report

    def _apply(self, plan: IndexPlan, progress: Progress | None = None, indexer: Indexer | None = None) -> IngestReport:
        return (indexer or self._indexer()).apply(plan, progress)

    @contextmanager
    def _writing_source(self, name: str) -> Iterator[None]:
        """One writer per source in this process (another source may be reindexed meanwhile); on a Qdrant server
        also the collection's writer lease, from planning to the last write (see Journal.holding)."""
        with self._locks_guard:
            lock = self._source_locks.setdefault(name, threading.Lock())
        with lock, self.journal.holding():
            yield

    def _indexer(self, store: ChunkStore | None = None, manifest: Manifest | None = None,
                 journal: Journal | None = None, embedder: Embedder | None = None) -> Indexer:  # fmt: skip
        embedder = embedder or self.embedder
        counter = TokenCounter.for_model(embedder.model_path)
        return Indexer(
            store or self.store,
            embedder,
            counter,
            self.manifest if manifest is None else manifest,
            journal or self.journal,
            self.settings,
        )

    def _drop_damaged(self, sources: set[str]) -> None:
        """For a repair: forget what the store lost (documents of ``sources``), so the reindex re-adds it."""
        damage = check_store(self.store, self.manifest)
        documents = self.manifest.snapshot()
        lost = [d for d in damage.missing if documents[d].source in sources]
        with self.journal.writing(), self.store.transaction():
            for doc_id in lost:
                self.store.delete_version(doc_id, documents[doc_id].doc_hash)
            self.manifest.commit(delete=lost)
        if damage.orphans:
            self.journal.recover()  # orphans are versions the manifest does not name: the sweep's job
        self._repairing = lost
        self.damage = check_store(self.store, self.manifest)

    def _require_incremental(self) -> None:
        if self._incompatible:
            raise FullRebuildRequired(f"{self._incompatible}\nRun: kb reindex --all --kb {self.path} --full")
        if self.info.chunking != self.settings.chunking_identity():
            raise FullRebuildRequired(
                f"{self.path} was chunked with {self.info.chunking}, the settings now say "
                f"{self.settings.chunking_identity()}; mixing both would leave incompatible chunks. "
                f"Rebuild with: kb reindex --all --kb {self.path} --full (or restore the old values)."
            )

    def _rebuild(
        self, targets: list[DocumentSource], dry_run: bool, progress: Progress | None, allow_mass_delete: bool
    ) -> IngestReport:
        """Every folder source into a new store; promoted only if it keeps what the old one held."""
        backend = self.settings.embedder_backend
        identity = model_identity(
            self.settings.embedder_model,
            self.identity.backend if backend is EmbedderBackend.AUTO else backend.value,
        )
        embedder = self.embedder if identity == self.identity else self._build_embedder(identity)
        sources = {s.name: s for s in self.registry.sources.values() if s.kind is SourceKind.FOLDER}
        sources.update({s.name: s for s in targets})
        store = self.store.staging(identity.dimension, _bm25(self.settings.bm25_identity()))
        manifest = Manifest(store.manifest_backend())
        journal = Journal(store, manifest)
        indexer = self._indexer(store, manifest, journal, embedder)
        same_model = identity == ModelIdentity.recorded(self.info.embedder)
        if same_model:
            indexer.vector_cache = self.store  # same model: unchanged chunk texts keep their vectors
        report = IngestReport(dry_run=dry_run)
        try:
            with ExitStack() as held:
                for name in sources:
                    held.enter_context(self._writing_source(name))
                rules_read: dict[str, bool] = {}  # a rules file with content was read (a comment alone counts)
                rules_kept: dict[str, bool] = {}  # one with rules: the next reindex must find it
                for source in sources.values():
                    rules_file = self.registry.read_rules_file(source.name)
                    plan = plan_source(source, manifest, self.settings, sync=True, rules_file_before=rules_file)
                    rules_read[source.name] = plan.policy.rules_file_read
                    rules_kept[source.name] = plan.policy.rules_to_keep
                    report.merge(_dry_report(plan) if dry_run else indexer.apply(plan, progress))
                if dry_run:
                    raise _DryRun
                refusal = self._rebuild_losses(manifest, [s.doc_id for s in report.skipped], allow_mass_delete)
                refusal = refusal or self._rebuild_opens(manifest, rules_read)
                if refusal:
                    report.refused_deletes = refusal
                    raise _DryRun
                IndexInfo(identity.as_dict(), self.settings.chunking_identity(), self.settings.bm25_identity()).write(
                    store
                )
                self.registry.save_to(store)
                with self.store.transaction():  # queries wait for the swap, then see the new index
                    self.manifest.close()
                    manifest.close()
                    self.store.promote(store)
                    self.info = IndexInfo.read(self.store)
                    self.manifest = Manifest(self.store.manifest_backend())
                    self.journal = Journal(self.store, self.manifest, self.path / LEGACY_DIRTY_FILE)
                    self.registry.save()
                    for name, kept in rules_kept.items():
                        self.registry.note_rules_file(name, kept)
                    self.identity, self._embedder = identity, embedder
                    self._incompatible = None
                    self.damage = Damage()
        except _DryRun:
            manifest.close()
            self.store.discard(store)
        except BaseException:
            manifest.close()
            self.store.discard(store)
            raise
        return report

    def _rebuild_opens(self, rebuilt: Manifest, rules_read: dict[str, bool]) -> str:
        """Why the rebuild may not replace the current index: a source with no rules file now, whose last reindex
        is not recorded as having read none, would open documents (the incremental plan refuses the same)."""
        unrecorded = {n for n, read in rules_read.items() if not read and self.registry.read_rules_file(n) is None}
        after = rebuilt.documents
        opened = [
            d for d, e in self.manifest.snapshot().items()
            if e.source in unrecorded and e.acl is not None and d in after and after[d].acl is not None
            and widens(e.acl, after[d].acl)
        ]  # fmt: skip
        if not opened:
            return ""
        return (
            f"the rebuilt index would open {len(opened)} documents (e.g. {', '.join(opened[:3])}): their source has "
            "no ACL rules file now, and this index does not record whether the last reindex read one. Nothing was "
            "replaced. Restore the rules file, or to drop its rules on purpose put a comment in it (# no rules)."
        )

    def _rebuild_losses(self, rebuilt: Manifest, skipped: list[str], allowed: bool) -> str:
        """Why the rebuilt store may not replace the current one: it would lose a document whose file is still
        there (unreadable or unparsable now: a reindex keeps its indexed version, a rebuild cannot), or too many
        documents that are in no source any more. ``skipped``: the rebuild's skipped ids (a folder's end in /)."""
        current = self.manifest.snapshot()
        after = rebuilt.documents
        emptied = [d for d, e in current.items() if e.chunks and d in after and not (after[d].chunks or after[d].size)]
        lost = [d for d in current if d not in after] + emptied  # a file emptied to 0 bytes is as good as deleted
        if allowed:
            return ""
        failed = [d for d in lost if any(d == s or (s.endswith("/") and d.startswith(s)) for s in skipped)]
        if failed:
            return (
                f"the rebuilt index would lose {len(failed)} documents whose files are there but could not be read "
                f"or parsed now (e.g. {', '.join(failed[:3])}; the report lists why). Nothing was replaced: a "
                "reindex keeps their indexed versions, a rebuild cannot. Fix them, or pass --allow-mass-delete "
                "to drop them."
            )
        if len(lost) <= 1 or len(lost) <= self.settings.max_delete_fraction * len(current):
            return ""
        example = ", ".join(lost[:3])
        why = f"; {len(emptied)} of them are files emptied to 0 bytes" if emptied else ""
        return (
            f"the rebuilt index would lose {len(lost)} of {len(current)} documents (e.g. {example}{why}): they are in "
            "no source folder now (documents indexed before sources existed, nodes added with kb.store.add, or "
            "missing folders). Nothing was replaced. Add their folders as sources, or pass --allow-mass-delete."
        )

    # -- nodes added through the LlamaIndex interface ---------------------------------------------------
    def _default_acl(self) -> list[str]:
        return [PUBLIC] if self.settings.acl_default is AclDefault.PUBLIC else []

    def _record_nodes(self, records: list[tuple[str, ChunkRecord]]) -> None:
        """Manifest entries for nodes added with ``kb.store.add``: counted, listed, readable by policy."""
        if NODES_SOURCE not in self.registry.sources:
            self.registry.put(DocumentSource(name=NODES_SOURCE, kind=SourceKind.NODES))
        documents = self.manifest.snapshot()
        put: dict[str, DocumentEntry] = {}
        for doc_id in {record.doc_id for _, record in records}:
            first = next(r for _, r in records if r.doc_id == doc_id)
            previous = documents.get(doc_id)
            put[doc_id] = DocumentEntry(
                doc_hash=first.doc_hash,
                chunks=self.store.count({"doc_id": [doc_id], "doc_hash": [first.doc_hash]}),
                mtime=previous.mtime if previous else 0.0,
                size=sum(len(r.text) for _, r in records if r.doc_id == doc_id) + (previous.size if previous else 0),
                source_format=first.source_format,
                title=first.title,
                acl=first.acl,
                source=first.source,
                path=first.path,
            )
        self.manifest.commit(put=put)

    # -- reading -------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 5,
        filters: dict[str, FilterValue] | None = None,
        mode: RetrievalMode | str | None = None,
        user: Principal | None = None,
        rerank: bool = False,
    ) -> list[Hit]:
        """The ``k`` chunks that best match ``query``; ``filters`` match front-matter fields exactly.

        ``user`` limits the search to documents its groups may read, inside the store query (a full
        top-k of readable chunks); ``None`` is a trusted caller that reads everything. ``rerank`` reorders
        the fused top ``reranker_candidates`` with the cross-encoder (when one is available; each hit's
        ``rerank_score`` then holds its 0..1 relevance)."""
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("query: expected a non-empty question or keywords")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k: expected a positive number of results, got {k!r}")
        reranker = self.reranker if rerank else None
        depth = max(k, self.settings.reranker_candidates) if reranker is not None else k
        found = self.hybrid_search(k, filters, mode, user=user).search(query, k=depth).hits
        hits = [Hit.of(h.node_id, h.score, h.record) for h in found]
        if reranker is None or not hits:
            return hits
        from kb.reranking import CrossEncoderReranker

        if isinstance(reranker, CrossEncoderReranker):
            ranked = reranker.rank(query, [h.text for h in hits], k, [h.score for h in hits])
            return [replace(hits[i], rerank_score=score) for i, score in ranked]
        # Any other node postprocessor (use_reranker): it sees nodes, as in answers; the hits stay the stored chunks.
        from llama_index.core.schema import NodeWithScore

        by_id = {h.node_id: h for h in hits}
        nodes = [NodeWithScore(node=h.record.to_node(h.node_id), score=h.score) for h in found]
        kept = reranker.postprocess_nodes(nodes, query_str=query)
        return [replace(by_id[n.node.node_id], rerank_score=n.score) for n in kept if n.node.node_id in by_id][:k]

    def ask(
        self,
        question: str,
        filters: dict[str, FilterValue] | None = None,
        on_token: Callable[[str], None] | None = None,
        user: Principal | None = None,
    ) -> Answer:
        """Answer ``question`` from the documents ``user`` may read, with citations, or refuse.

        Only readable chunks are retrieved, so nothing forbidden reaches the generator."""
        return self.answer_engine(filters, user).answer(question, on_token)

    def ask_stream(
        self, question: str, filters: dict[str, FilterValue] | None = None, user: Principal | None = None
    ) -> Iterator[AnswerEvent]:
        """Like :meth:`ask`, as a stream: text pieces as they are generated, then the :class:`Answer`."""
        return self.answer_engine(filters, user).stream(question)

    def standalone_question(self, messages: Sequence[Any]) -> str:
        """The conversation's last question, rewritten to stand alone (see :mod:`kb.chat`)."""
        from kb.chat import rewrite, turns_of

        return rewrite(turns_of(messages), self.llm)

    def chat(
        self,
        messages: Sequence[Any],
        filters: dict[str, FilterValue] | None = None,
        on_token: Callable[[str], None] | None = None,
        user: Principal | None = None,
    ) -> Answer:
        """Answer the last question of a conversation (``[{"role": "user"|"assistant", "content": ...}, ...]``):
        a follow-up is rewritten into a standalone question (``answer.question``); retrieval fuses the
        rankings of the rewrite and of the question as typed, so a wrong rewrite cannot lose what it named."""
        from kb.chat import rewrite, turns_of

        turns = turns_of(messages)
        question = rewrite(turns, self.llm)
        return self.answer_engine(filters, user).answer(question, on_token, also=[turns[-1].content])

    def chat_stream(
        self, messages: Sequence[Any], filters: dict[str, FilterValue] | None = None, user: Principal | None = None
    ) -> Iterator[AnswerEvent]:
        from kb.chat import rewrite, turns_of

        turns = turns_of(messages)
        return self.answer_engine(filters, user).stream(rewrite(turns, self.llm), also=[turns[-1].content])

    def source_rows(self) -> list[dict[str, Any]]:
        """Per source: its settings, documents, chunks, last reindex and what it skipped (``kb source list``)."""
        documents = self.manifest.snapshot()
        rows = []
        for source in self.registry.sources.values():
            mine = [e for e in documents.values() if e.source == source.name]
            status = self.registry.status.get(source.name)
            rows.append(
                {
                    **source.model_dump(mode="json"),
                    "documents": len(mine),
                    "chunks": sum(e.chunks for e in mine),
                    "last_reindex": status.last_reindex if status else 0.0,
                    "last_summary": status.summary if status else "",
                    "skipped": status.skipped if status else [],
                }
            )
        return rows

    def status(self) -> Status:
        documents = self.manifest.snapshot()
        return Status(
            path=str(self.path),
            store=self.store.describe(),
            reranker={
                "model": self.settings.reranker_model,
                "backend": self.settings.reranker_backend.value,
                "active": self.reranker is not None,
                "blend": getattr(self.reranker, "blend", None),
                "note": self.reranker_note,
            },
            documents=len(documents),
            chunks=self.store.count(),
            disk_bytes=self.store.disk_bytes(),
            embedder=self.info.embedder,
            chunking=self.info.chunking,
            updated_at=self.manifest.updated_at,
            settings=self.settings.public_dump(),
            sources=self.source_rows(),
            damage=self.damage.describe(str(self.path)) if self.damage.damaged else "",
            legacy_documents=sum(1 for e in documents.values() if not e.source),
        )


class FullRebuildRequired(ConfigError):
    """The settings changed what chunks or vectors look like: only ``reindex(full=True)`` may proceed."""


class _DryRun(Exception):
    """Unwinds a rebuild that must not be promoted (dry run, or refused)."""


class ReindexJob:
    """A reindex running in a background thread: ``wait()`` returns its report or raises its error."""

    def __init__(self, work: Callable[[Progress], IngestReport]) -> None:
        self.done = 0
        self.total = 0
        self.current = ""
        self.report: IngestReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="kb-reindex", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[Progress], IngestReport]) -> None:
        try:
            self.report = work(self._progress)
        except PartialReindexError as exc:  # failed, but the other sources' work is done: keep its report
            self.report, self.error = exc.report, exc  # type: ignore[assignment]
        except BaseException as exc:
            self.error = exc

    def _progress(self, done: int, total: int, doc_id: str) -> None:
        self.done, self.total, self.current = done, total, doc_id

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> IngestReport:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.report is None:
            raise TimeoutError("reindex still running")
        return self.report


def _dry_report(plan: IndexPlan) -> IngestReport:
    report = IngestReport(
        added=list(plan.added),
        changed=list(plan.changed),
        deleted=[] if plan.refused_deletes else list(plan.deleted),
        unchanged=plan.unchanged,
        acl_changed=[d for d in plan.acl_changed if d not in {*plan.changed, *plan.refreshed}],
        refreshed=list(plan.refreshed),
        adopted=list(plan.adopted),
        skipped=list(plan.skipped),
        ignored=dict(plan.ignored),
        refused_deletes=plan.refused_deletes,
        not_deleted=list(plan.deleted) if plan.refused_deletes else [],
        sources=[plan.source.name],
        dry_run=True,
    )
    report.timings["plan"] = report.seconds = plan.seconds
    return report


def _validated(**values: Any) -> DocumentSource:
    from pydantic import ValidationError

    try:
        return DocumentSource.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(p) for p in err["loc"]) or "source"
        raise ConfigError(f"source {field_name}: {err['msg'].removeprefix('Value error, ')}") from exc


@dataclass
class _Held:
    """What an open KnowledgeBase must give back (kept apart from it, so collecting it can release them)."""

    store: ChunkStore
    manifest: Manifest
    lock: IndexLock | None


def _release(held: _Held, key: Path, ident: int) -> None:
    """Close what an open KnowledgeBase holds (on close(), or when it is garbage-collected)."""
    try:
        held.manifest.close()
        held.store.close()
    finally:
        if held.lock is not None:
            held.lock.release()
        with _OPEN_LOCK:
            if key in _OPEN and _OPEN[key][1] == ident:
                del _OPEN[key]


def _index_exists(folder: Path) -> bool:
    """Whether an embedded (or local-mode) index was built in ``folder``: a kb.toml alone (sources declared,
    nothing indexed yet) is not one. A server-backed index keeps its state in the collection instead."""
    return (folder / INDEX_FILE).is_file() or (folder / LOCAL_MODE_DIR).is_dir()


def _bm25(identity: dict[str, Any]) -> Bm25Encoder:
    return Bm25Encoder(identity["k"], identity["b"], identity["avg_len"], identity["language"])


def _check_chunk_cap(settings: Settings) -> None:
    readable = max_seq_length(resolve_model_path(settings.embedder_model)) - 2
    if settings.chunk_max_tokens > readable:
        raise ConfigError(
            f"chunk_max_tokens={settings.chunk_max_tokens} is more than {settings.embedder_model} reads "
            f"({readable} tokens); the rest of each chunk would be silently ignored. Set it to {readable} or less."
        )


def _backend(settings: Settings, info: IndexInfo | None) -> str:
    """The embedder backend to use: the setting, else what the index was built with, else the default."""
    if settings.embedder_backend is not EmbedderBackend.AUTO:
        return settings.embedder_backend.value
    if info is not None:
        return ModelIdentity.recorded(info.embedder).backend
    if DEFAULT_EMBEDDER_BACKEND is EmbedderBackend.OPENVINO and not _installed("openvino"):
        return EmbedderBackend.ONNX.value  # a platform without OpenVINO's wheels (Windows on ARM, musl)
    return DEFAULT_EMBEDDER_BACKEND.value


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # in sys.modules as None: its import was blocked
        return False


def _check_compatible(folder: Path, info: IndexInfo, identity: ModelIdentity, settings: Settings) -> None:
    built = ModelIdentity.recorded(info.embedder)
    if built.sha256 != identity.sha256 or built.dimension != identity.dimension:
        raise EmbedderMismatchError(
            f"{folder} was built with embedder {built.describe()} but the settings name {identity.describe()}. "
            f'Vectors from different models cannot be compared: set embedder_model = "{built.name}" (kb.toml or '
            "KB_EMBEDDER_MODEL), or build a new index with the new model."
        )
    if built.backend != identity.backend:
        raise EmbedderMismatchError(
            f"{folder} was built with embedder backend {built.backend!r}, the settings say {identity.backend!r}: "
            f"their vectors differ slightly, and an index does not mix them. Set embedder_backend = "
            f'"{built.backend}" (or "auto"), or rebuild with: kb reindex --all --full --kb {folder}'
        )
    if built.export != identity.export:
        raise EmbedderMismatchError(
            f"{folder} was built with kb's int8 export revision {built.export} of the embedder; this kb runs "
            f"revision {identity.export} (another quantised graph: its vectors differ slightly, and an index does not "
            f"mix them). Rebuild with: kb reindex --all --full --kb {folder}"
        )
    if info.bm25 != settings.bm25_identity():
        raise ConfigError(
            f"{folder} was built with BM25 settings {info.bm25}, the settings now say {settings.bm25_identity()}; "
            "restore the old values or build a new index."
        )
