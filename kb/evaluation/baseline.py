"""The recipe a LlamaIndex user would assemble from its documentation, as the evaluation's baseline.

``SimpleDirectoryReader`` → ``SentenceSplitter()`` (default sizes; or ``chunk_size=256``, what MiniLM reads,
for a fairer comparison that does not hand the generator text the embedder never read) → ``VectorStoreIndex`` on
``QdrantVectorStore`` (qdrant-client local mode) + ``BM25Retriever`` → ``QueryFusionRetriever`` in
reciprocal-rank mode with ``num_queries=1``; answers with LlamaIndex's ``CitationQueryEngine``. It gets the
same embedder and generator as kb. A reranker (``SentenceTransformerRerank``) would follow the fusion, but no
cross-encoder can be loaded offline here, so neither system has that stage.
"""

from __future__ import annotations

import bisect
import re
import time
import uuid
from pathlib import Path
from typing import Any

from llama_index.core import SimpleDirectoryReader, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import LLM, MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import CitationQueryEngine
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import BaseNode, NodeWithScore
from llama_index.retrievers.bm25 import BM25Retriever
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from kb.document import ParsedDocument
from kb.evaluation.runner import AnswerRecord, Retrieved
from kb.grounding import Numbered
from kb.loading import load_file
from kb.settings import Settings

ANSWER_SOURCES = 3
_NODE_NAMESPACE = uuid.UUID("4b7b3c39-2f0e-4d93-9a4d-3c1b2a0f7e61")


class LlamaIndexBaseline:
    stages = ("bm25", "dense", "fused")

    def __init__(
        self,
        corpus: Path,
        embedder: BaseEmbedding,
        llm: LLM | None,
        k: int = 10,
        chunk_size: int | None = None,
    ) -> None:
        self.name = "llamaindex" if chunk_size is None else f"llamaindex-{chunk_size}"
        self.chunk_size = chunk_size
        self.corpus = corpus.resolve()
        self.embedder = embedder
        self.llm = llm
        self.timings: dict[str, float] = {}
        tick = time.perf_counter()
        documents = SimpleDirectoryReader(
            str(self.corpus), recursive=True, filename_as_id=True, exclude_hidden=False
        ).load_data()
        self.timings["read"] = time.perf_counter() - tick
        tick = time.perf_counter()
        splitter = SentenceSplitter() if chunk_size is None else SentenceSplitter(chunk_size=chunk_size)
        self.nodes: list[BaseNode] = splitter.get_nodes_from_documents(documents)
        for node in self.nodes:  # stable ids (the splitter draws random ones): results can be compared across runs
            key = f"{node.metadata.get('file_path', node.ref_doc_id)}\0{node.start_char_idx}\0{node.end_char_idx}"
            node.id_ = str(uuid.uuid5(_NODE_NAMESPACE, key))
        self.timings["chunk"] = time.perf_counter() - tick
        self._texts = {d.doc_id: d.text for d in documents}
        self._markup_maps: dict[str, MarkupToText] = {}
        tick = time.perf_counter()
        client = QdrantClient(location=":memory:")  # qdrant-client local mode, as a user without a server would
        store = QdrantVectorStore(client=client, collection_name="baseline")
        self.index = VectorStoreIndex(
            self.nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embedder
        )
        self.timings["embed+store"] = time.perf_counter() - tick
        self.dense = self.index.as_retriever(similarity_top_k=k)
        self.bm25 = BM25Retriever.from_defaults(nodes=self.nodes, similarity_top_k=k)
        self.fused = self._fusion(k)
        self._retrievers = {"bm25": self.bm25, "dense": self.dense, "fused": self.fused}
        # Answers read the top ANSWER_SOURCES of the same fusion, as LlamaIndex's CitationQueryEngine example
        # does (similarity_top_k=3): ten 1,024-token nodes would not fit the generator's context window.
        self.answer_retriever = self._fusion(ANSWER_SOURCES)

    def _fusion(self, top_k: int) -> QueryFusionRetriever:
        # With num_queries=1 the fusion retriever never calls its LLM, but it resolves one when built
        # (OpenAI by default, which is not installed here): hand it the generator, or a mock.
        return QueryFusionRetriever(
            [self.dense, self.bm25],
            llm=self.llm or MockLLM(),
            mode="reciprocal_rerank",
            num_queries=1,
            similarity_top_k=top_k,
            use_async=False,
        )

    def retrieve(self, stage: str, question: str, k: int) -> list[Retrieved]:
        return [self._located(n) for n in self._retrievers[stage].retrieve(question)[:k]]

    def answer(self, question: str) -> AnswerRecord:
        if self.llm is None:
            raise RuntimeError("the baseline answers only with a generator (llm)")
        engine = CitationQueryEngine.from_args(self.index, retriever=self.answer_retriever, llm=self.llm)
        tick = time.perf_counter()
        response = engine.query(question)
        total = (time.perf_counter() - tick) * 1e3
        text = str(response)
        refused = "don't know" in text.lower() or "do not know" in text.lower()
        # CitationQueryEngine re-splits sources into numbered "Source n:" nodes; map each back to its file span.
        sources = [Numbered(_source_number(n), n.node.get_content()) for n in response.source_nodes]
        read = [self._located(n) for n in response.source_nodes]  # locating reads the document: once per source
        cited = [located for located, s in zip(read, sources, strict=True) if f"[{s.number}]" in text]
        return AnswerRecord(text, refused, cited, {"total": total}, sources, read=read)

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": f"SimpleDirectoryReader + SentenceSplitter({self._splitter_args()}) "
            "+ VectorStoreIndex(QdrantVectorStore local mode) "
            "+ BM25Retriever + QueryFusionRetriever(reciprocal_rerank, num_queries=1) "
            f"+ CitationQueryEngine (answers from the fused top {ANSWER_SOURCES}, citation_chunk_size=512)",
            "answer_sources": ANSWER_SOURCES,
            "nodes": len(self.nodes),
            "ingest_s": {k: round(v, 2) for k, v in self.timings.items()},
        }

    def _splitter_args(self) -> str:
        return "" if self.chunk_size is None else f"chunk_size={self.chunk_size}"

    def _located(self, hit: NodeWithScore) -> Retrieved:
        node = hit.node
        doc_id = Path(node.metadata.get("file_path", node.ref_doc_id or "")).resolve()
        rel = doc_id.relative_to(self.corpus).as_posix() if doc_id.is_relative_to(self.corpus) else str(doc_id)
        start, end = node.start_char_idx, node.end_char_idx
        if start is None or end is None:
            # CitationQueryEngine's "Source n:" nodes lose their offsets: find the text in its document.
            content = re.sub(r"^Source \d+:\n", "", node.get_content())
            text = self._texts.get(node.ref_doc_id or "", "")
            start = max(text.find(content[:200]), 0)
            end = start + len(content)
        if doc_id.suffix.lower() in HTML_SUFFIXES and doc_id.is_relative_to(self.corpus):
            start, end = self._html_spans(rel, node.ref_doc_id or "").to_text(start, end)
        return Retrieved(rel, start, end, node.node_id, node.get_content()[:200])

    def _html_spans(self, rel: str, ref_doc_id: str) -> MarkupToText:
        if rel not in self._markup_maps:
            parsed = load_file(self.corpus / rel, rel, Settings()).parsed
            self._markup_maps[rel] = MarkupToText(self._texts.get(ref_doc_id, ""), parsed)
        return self._markup_maps[rel]


HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


class MarkupToText:
    """Raw-HTML offsets (what the stock reader indexes: it reads HTML as plain text) → offsets in kb's
    extracted text (what gold spans index), through the source line each piece of text came from.

    Line-grained: a baseline chunk maps to the extracted text of the source lines it spans, so it is judged
    on the same coordinates as kb's chunks; a chunk of pure markup (``<head>``, scripts) maps to nothing.
    """

    def __init__(self, raw: str, parsed: ParsedDocument) -> None:
        self.raw_line_starts = [0] + [m.end() for m in re.finditer("\n", raw)]
        self.text_starts = parsed.line_starts  # text offset where each run of one source line begins
        self.source_lines = parsed.source_lines  # ...and that line (1-based, ascending)
        self.text_length = len(parsed.text)

    def to_text(self, start: int, end: int) -> tuple[int, int]:
        first_line = bisect.bisect_right(self.raw_line_starts, start)
        last_line = bisect.bisect_right(self.raw_line_starts, max(end - 1, start))
        first = bisect.bisect_left(self.source_lines, first_line)
        after = bisect.bisect_right(self.source_lines, last_line)
        if first >= after:
            return 0, 0
        text_end = self.text_starts[after] if after < len(self.text_starts) else self.text_length
        return self.text_starts[first], text_end


def _source_number(hit: NodeWithScore) -> int:
    content = hit.node.get_content()
    if content.startswith("Source "):
        head = content.split(":", 1)[0].removeprefix("Source ").strip()
        if head.isdigit():
            return int(head)
    return -1
