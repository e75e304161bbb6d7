"""``HybridRetriever``: kb's hybrid search as a LlamaIndex ``BaseRetriever`` (``kb.retriever()``).

    >>> retriever = kb.retriever(k=5, filters={"product": "billing"})   # doctest: +SKIP
    >>> for hit in retriever.retrieve("E4012"):                         # doctest: +SKIP
    ...     print(hit.score, hit.node.metadata["doc_id"], hit.node.metadata["header_path"])

Each node's metadata is its chunk's payload (:meth:`kb.records.ChunkRecord.to_node`): document id, title,
header path, span, URL, ACL; the same filters and ACL apply inside both legs as for ``kb.search``.
"""

from __future__ import annotations

import inspect
from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle

from kb.retrieval import HybridSearch, RetrievalResult

_SEARCH_PARAMETERS = tuple(inspect.signature(HybridSearch.__init__).parameters)[1:]


class HybridRetriever(BaseRetriever):
    """A LlamaIndex retriever over a :class:`~kb.retrieval.HybridSearch` (its ``k``, filters, mode and user).

    ``HybridRetriever(search)``; the arguments of :class:`~kb.retrieval.HybridSearch` (store, embedder,
    settings, k, …) are accepted too, as before the search and its LlamaIndex face were two classes."""

    def __init__(self, search: HybridSearch | Any = None, *args: Any, **kwargs: Any) -> None:
        if not isinstance(search, HybridSearch):
            own = {name: kwargs.pop(name) for name in _SEARCH_PARAMETERS if name in kwargs}
            search = HybridSearch(*([] if search is None else [search]), *args, **own)
        elif args:
            raise TypeError("HybridRetriever(search): a HybridSearch takes no further positional arguments")
        super().__init__(**kwargs)
        self.search_engine = search

    @property
    def similarity_top_k(self) -> int:
        return self.search_engine.similarity_top_k

    def search(self, query: str, k: int | None = None, with_relevance: bool = False) -> RetrievalResult:
        """The search behind :meth:`retrieve`, with kb's records and the time spent per stage."""
        return self.search_engine.search(query, k, with_relevance)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [
            NodeWithScore(node=hit.record.to_node(hit.node_id), score=hit.score)
            for hit in self.search_engine.search(query_bundle.query_str).hits
        ]
