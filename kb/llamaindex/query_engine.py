"""``CitedQueryEngine``: kb's answer engine as a LlamaIndex ``BaseQueryEngine`` (``kb.query_engine()``).

    >>> response = kb.query_engine().query("What does error E4012 mean?")   # doctest: +SKIP
    >>> response.response, [n.node.metadata["doc_id"] for n in response.source_nodes]   # doctest: +SKIP
    >>> response.metadata["answer"].citations                                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import Response
from llama_index.core.schema import NodeWithScore, QueryBundle

from kb.answering import AnswerEngine


class CitedQueryEngine(BaseQueryEngine):
    """LlamaIndex face of :class:`~kb.answering.AnswerEngine`: ``query()`` returns a ``Response`` whose
    ``source_nodes`` are the cited chunks and whose ``metadata["answer"]`` is the full :class:`~kb.citations.Answer`."""

    def __init__(self, engine: AnswerEngine) -> None:
        super().__init__(callback_manager=None)
        self._engine = engine

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _query(self, query_bundle: QueryBundle) -> Response:
        answer = self._engine.answer(query_bundle.query_str)
        cited = {c.node_id for c in answer.citations}
        nodes = [
            NodeWithScore(node=s.record().to_node(s.node_id), score=s.score)
            for s in answer.sources
            if s.node_id in cited
        ]
        return Response(response=answer.text, source_nodes=nodes, metadata={"answer": answer})

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return self._query(query_bundle)
