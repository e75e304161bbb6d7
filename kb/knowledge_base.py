"""``KnowledgeBase``: the one object callers use. The CLI and the demo are thin faces over it.

from kb import KnowledgeBase
kb = KnowledgeBase.open("indexes/handbook")           # embedded Qdrant: no server to start
kb.ingest("path/to/docs")
for hit in kb.search("how do I rotate the API key?", k=5, filters={"product": "billing"}):
    print(hit.score, hit.doc_id, hit.header_path, hit.span, hit.text[:80])
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llama_index.core.llms import LLM

from kb.acl import Principal
from kb.answering import AnswerEngine, AnswerEvent, CitedQueryEngine
from kb.chunking import HeadingChunker
from kb.citations import Answer
from kb.document import Span
from kb.embedding import ModelIdentity, SentenceTransformerEmbedder, max_seq_length, model_identity, resolve_model_path
from kb.errors import ConfigError, EmbedderMismatchError
from kb.indexing import DIRTY_FILE, Indexer, IngestReport, Progress, sweep
from kb.llm import build_llm
from kb.locking import IndexLock
from kb.manifest import IndexInfo, Manifest
from kb.reranking import CrossEncoderReranker, load_reranker
from kb.retrieval import HybridRetriever
from kb.settings import FusionMethod, RetrievalMode, Settings
from kb.sparse import Bm25Encoder
from kb.store import open_store
from kb.store.base import ChunkStore, FilterValue
from kb.tokens import TokenCounter

DEFAULT_INDEX = Path("indexes/default")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk, where it comes from, and its score."""

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

    @classmethod
    def from_payload(cls, node_id: str, score: float, payload: dict[str, Any]) -> Hit:
        return cls(
            score=score,
            doc_id=payload.get("doc_id", ""),
            title=payload.get("title", ""),
            header_path=" > ".join(payload.get("header_path") or []),
            span=Span.from_list(payload.get("span") or [0, 0, 0, 0]),
            text=payload.get("text", ""),
            node_id=node_id,
            url=payload.get("url", ""),
            metadata=payload.get("meta") or {},
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


class KnowledgeBase:
    """A knowledge base in an index folder: ingest documents, then search them."""

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
        self.manifest = Manifest.read(store)
        self._lock = lock
        self._incompatible = incompatible  # why only a full rebuild may touch this index, if so
        self._embedder: SentenceTransformerEmbedder | None = None
        self._llm: LLM | None = None
        self._llm_built = False
        self._reranker: CrossEncoderReranker | None = None
        self._reranker_built = False
        self.reranker_note = ""  # why the reranking stage is off, when it is

    # -- lifecycle -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path = DEFAULT_INDEX,
        settings: Settings | None = None,
        for_rebuild: bool = False,
        **overrides: Any,
    ) -> KnowledgeBase:
        """Open the index at ``path``, creating it when the folder holds none.

        Raises :class:`EmbedderMismatchError` when the index was built with another embedder than the one
        the settings name (with ``for_rebuild`` the index opens, and only ``reindex(full=True)`` works),
        and :class:`IndexLockedError`, naming the holder, when another process has it open.
        After a crash, unfinished work is rolled back or forward here, before anything is read.
        """
        folder = Path(path)
        settings = settings or Settings.load(folder, **overrides)
        identity = model_identity(settings.embedder_model)
        _check_chunk_cap(settings)
        lock = IndexLock(folder).acquire()
        store: ChunkStore | None = None
        try:
            store = open_store(folder, settings, identity.dimension, _bm25(settings.bm25_identity()))
            incompatible = None
            if IndexInfo.exists(store):
                info = IndexInfo.read(store)
                store.use_bm25(_bm25(info.bm25))
                try:
                    _check_compatible(folder, info, identity, settings)
                except (EmbedderMismatchError, ConfigError) as exc:
                    if not for_rebuild:
                        raise
                    incompatible = str(exc)
            else:
                info = IndexInfo(identity.as_dict(), settings.chunking_identity(), settings.bm25_identity())
                info.write(store)
            kb = cls(folder, settings, store, info, lock, incompatible)
            unstamped = sum(1 for entry in kb.manifest.documents.values() if entry.acl is None)
            if unstamped:
                log.warning(
                    "%s: %d documents were indexed before access control and are readable only by trusted "
                    "callers until the next reindex stamps their ACL (payload only, no re-embedding).",
                    folder,
                    unstamped,
                )
            if (folder / DIRTY_FILE).exists():
                sweep(store, kb.manifest)
                kb.manifest.write(store)
                store.flush()
                (folder / DIRTY_FILE).unlink()
            return kb
        except BaseException:
            if store is not None:
                store.close()
            lock.release()
            raise

    def close(self) -> None:
        self.store.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parts ---------------------------------------------------------------------------------------
    @property
    def embedder(self) -> SentenceTransformerEmbedder:
        if self._embedder is None:
            self._embedder = SentenceTransformerEmbedder(self.settings.embedder_model, self.settings.embed_batch_size)
        return self._embedder

    def chunker(self) -> HeadingChunker:
        counter = TokenCounter.for_model(self.embedder.model_path)
        return HeadingChunker(
            counter, max_tokens=self.settings.chunk_max_tokens, min_tokens=self.settings.chunk_min_tokens
        )

    @property
    def llm(self) -> LLM | None:
        """The generator the settings name (built on first use); ``None`` means extractive answers."""
        if not self._llm_built:
            self._llm = build_llm(self.settings)
            self._llm_built = True
        return self._llm

    @property
    def reranker(self) -> CrossEncoderReranker | None:
        """The cross-encoder stage (loaded on first use), or ``None`` when off or unavailable (see
        ``reranker_note``): kb then answers from the fused ranking."""
        if not self._reranker_built:
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

    def use_reranker(self, reranker: CrossEncoderReranker | None) -> None:
        """Rerank with ``reranker`` (any LlamaIndex node postprocessor of this shape), or not at all with ``None``."""
        self._reranker, self._reranker_built = reranker, True
        self.reranker_note = "" if reranker is not None else "reranking turned off by use_reranker(None)"

    def use_llm(self, llm: LLM | None) -> None:
        """Answer with ``llm`` (any LlamaIndex LLM), or extractively with ``None``."""
        self._llm, self._llm_built = llm, True

    def answer_engine(
        self, filters: dict[str, FilterValue] | None = None, user: Principal | None = None
    ) -> AnswerEngine:
        retriever = self.retriever(self.settings.answer_sources, filters, user=user)
        return AnswerEngine(retriever, self.embedder, self.settings, self.llm, self.reranker)

    def query_engine(
        self, filters: dict[str, FilterValue] | None = None, user: Principal | None = None
    ) -> CitedQueryEngine:
        """A LlamaIndex query engine that answers with citations, from what ``user`` may read."""
        return CitedQueryEngine(self.answer_engine(filters, user))

    def retriever(
        self,
        k: int = 5,
        filters: dict[str, FilterValue] | None = None,
        mode: RetrievalMode | str | None = None,
        fusion: FusionMethod | str | None = None,
        user: Principal | None = None,
    ) -> HybridRetriever:
        """A LlamaIndex retriever over the documents ``user`` may read (everything when ``None``)."""
        return HybridRetriever(self.store, self.embedder, self.settings, k, filters, mode, fusion, user=user)

    # -- operations ----------------------------------------------------------------------------------
    def ingest(
        self,
        folder: str | Path,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        acl: list[str] | None = None,
    ) -> IngestReport:
        """Add new and changed documents under ``folder`` (Markdown, reST, HTML, text) to the index.

        Documents already indexed from elsewhere are kept; use :meth:`reindex` to mirror a folder.
        ``acl`` (group names) overrides every document's own ACL (see :mod:`kb.acl`).
        """
        self._require_incremental()
        return self._indexer().ingest(folder, metadata, progress, acl)

    def reindex(
        self,
        folder: str | Path,
        full: bool = False,
        dry_run: bool = False,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        acl: list[str] | None = None,
    ) -> IngestReport:
        """Make the index mirror ``folder``: add new, replace changed, delete removed documents.

        ``dry_run`` only plans. ``full`` rebuilds everything into a new shard, swapped in when complete
        (needed after changing the embedder or the chunk settings; queries keep using the old one meanwhile).
        """
        if full:
            return self._rebuild(folder, dry_run, metadata, progress, acl)
        self._require_incremental()
        indexer = self._indexer()
        plan = indexer.plan(folder, sync=True, acl=acl)
        if dry_run:
            report = IngestReport(
                added=plan.added,
                changed=plan.changed,
                deleted=plan.deleted,
                unchanged=plan.unchanged,
                acl_changed=list(plan.acl_changed),
                dry_run=True,
            )
            report.skipped, report.seconds = list(plan.skipped), plan.seconds
            return report
        return indexer.apply(plan, metadata, progress)

    def reindex_in_background(self, folder: str | Path, **options: Any) -> ReindexJob:
        """Run :meth:`reindex` in a thread; this object keeps answering queries meanwhile."""
        return ReindexJob(lambda progress: self.reindex(folder, progress=progress, **options))

    def _indexer(self, store: ChunkStore | None = None, manifest: Manifest | None = None) -> Indexer:
        counter = TokenCounter.for_model(self.embedder.model_path)
        return Indexer(
            store or self.store,
            self.embedder,
            self.chunker(),
            counter,
            self.manifest if manifest is None else manifest,
            self.path,
            self.settings,
        )

    def _require_incremental(self) -> None:
        if self._incompatible:
            raise FullRebuildRequired(f"{self._incompatible}\nRun: kb reindex DOCS --kb {self.path} --full")
        if self.info.chunking != self.settings.chunking_identity():
            raise FullRebuildRequired(
                f"{self.path} was chunked with {self.info.chunking}, the settings now say "
                f"{self.settings.chunking_identity()}; mixing both would leave incompatible chunks. "
                f"Rebuild with: kb reindex DOCS --kb {self.path} --full (or restore the old values)."
            )

    def _rebuild(
        self,
        folder: str | Path,
        dry_run: bool,
        metadata: dict[str, Any] | None,
        progress: Progress | None,
        acl: list[str] | None,
    ) -> IngestReport:
        identity = model_identity(self.settings.embedder_model)
        store = self.store.staging(identity.dimension, _bm25(self.settings.bm25_identity()))
        manifest = Manifest()
        indexer = self._indexer(store, manifest)
        if identity.sha256 == self.info.embedder.get("sha256"):
            indexer.vector_cache = self.store  # same model: unchanged chunk texts keep their vectors
        try:
            plan = indexer.plan(folder, sync=True, acl=acl)
            if dry_run:
                self.store.discard(store)
                report = IngestReport(added=plan.added, unchanged=0, dry_run=True)
                report.skipped, report.seconds = list(plan.skipped), plan.seconds
                return report
            report = indexer.apply(plan, metadata, progress)
            manifest.write(store)
            IndexInfo(identity.as_dict(), self.settings.chunking_identity(), self.settings.bm25_identity()).write(store)
        except BaseException:
            self.store.discard(store)
            raise
        with self.store.transaction():  # queries wait for the swap, then see the new index
            self.store.promote(store)
            self.info = IndexInfo.read(self.store)
            self.manifest = Manifest.read(self.store)
            self._incompatible = None
        return report

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
        if k < 1:
            raise ConfigError(f"k: expected a positive number of results, got {k}")
        reranker = self.reranker if rerank else None
        depth = max(k, self.settings.reranker_candidates) if reranker is not None else k
        nodes = self.retriever(k, filters, mode, user=user).search(query, k=depth).nodes
        hits = [
            Hit.from_payload(n.node.node_id, n.score or 0.0, {**n.node.metadata, "text": n.node.get_content()})
            for n in nodes
        ]
        if reranker is None or not hits:
            return hits
        ranked = reranker.rank(query, [h.text for h in hits], k, [h.score for h in hits])
        return [replace(hits[i], rerank_score=score) for i, score in ranked]

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

    def status(self) -> Status:
        return Status(
            path=str(self.path),
            store=self.store.describe(),
            reranker={
                "model": self.settings.reranker_model,
                "backend": self.settings.reranker_backend.value,
                "active": self.reranker is not None,
                "blend": self.reranker.blend if self.reranker is not None else None,
                "note": self.reranker_note,
            },
            documents=len(self.manifest.documents),
            chunks=self.store.count(),
            disk_bytes=self.store.disk_bytes(),
            embedder=self.info.embedder,
            chunking=self.info.chunking,
            updated_at=self.manifest.updated_at,
            settings=self.settings.public_dump(),
        )


class FullRebuildRequired(ConfigError):
    """The settings changed what chunks or vectors look like: only ``reindex(full=True)`` may proceed."""


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


def _bm25(identity: dict[str, Any]) -> Bm25Encoder:
    return Bm25Encoder(identity["k"], identity["b"], identity["avg_len"], identity["language"])


def _check_chunk_cap(settings: Settings) -> None:
    readable = max_seq_length(resolve_model_path(settings.embedder_model)) - 2
    if settings.chunk_max_tokens > readable:
        raise ConfigError(
            f"chunk_max_tokens={settings.chunk_max_tokens} is more than {settings.embedder_model} reads "
            f"({readable} tokens); the rest of each chunk would be silently ignored. Set it to {readable} or less."
        )


def _check_compatible(folder: Path, info: IndexInfo, identity: ModelIdentity, settings: Settings) -> None:
    built = info.embedder
    if built.get("sha256") != identity.sha256 or built.get("dimension") != identity.dimension:
        raise EmbedderMismatchError(
            f"{folder} was built with embedder {built.get('name')} ({built.get('dimension')}-d, weights sha256 "
            f"{str(built.get('sha256'))[:12]}…) but the settings name {identity.describe()}. Vectors from different "
            f'models cannot be compared: set embedder_model = "{built.get("name")}" (kb.toml or KB_EMBEDDER_MODEL), '
            "or build a new index with the new model."
        )
    if info.bm25 != settings.bm25_identity():
        raise ConfigError(
            f"{folder} was built with BM25 settings {info.bm25}, the settings now say {settings.bm25_identity()}; "
            "restore the old values or build a new index."
        )
