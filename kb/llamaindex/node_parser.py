"""``HeadingNodeParser``: kb's heading-aware chunker as a LlamaIndex ``NodeParser``.

    >>> from llama_index.core import Document
    >>> parser = HeadingNodeParser.for_model("all-MiniLM-L6-v2", max_tokens=200)
    >>> nodes = parser.get_nodes_from_documents([Document(text="# Deploy\\n\\nRun make deploy.")])
    >>> nodes[0].metadata["header_path"], nodes[0].text
    (['Deploy'], '# Deploy\\n\\nRun make deploy.')

A document's ``metadata["source_format"]`` (``markdown`` by default, ``rst``, ``html``, ``asciidoc``, ``text``)
picks the parser; each node carries its header path (``["Guide", "Install"]``) and its span, so adding the nodes to
``kb.vector_store`` keeps both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.node_parser import NodeParser
from llama_index.core.schema import BaseNode, NodeRelationship, TextNode
from pydantic import Field, PrivateAttr

from kb.chunking import HeadingChunker


class HeadingNodeParser(NodeParser):
    """A LlamaIndex node parser over a :class:`~kb.chunking.HeadingChunker`.

    The caps are fields too (LlamaIndex's ingestion cache keys a transformation by its fields): setting them
    on the parser cuts by the new values."""

    max_tokens: int = Field(200, ge=8, description="Cap on a chunk, in tokens of the embedder's tokenizer.")
    min_tokens: int = Field(48, ge=0, description="Smaller chunks merge with the next section when they fit.")
    _chunker: HeadingChunker = PrivateAttr()

    def __init__(self, chunker: HeadingChunker, **data: Any) -> None:
        super().__init__(**{"max_tokens": chunker.max_tokens, "min_tokens": chunker.min_tokens, **data})
        self._chunker = chunker

    @classmethod
    def for_model(cls, model: str, max_tokens: int = 200, min_tokens: int = 48, **data: Any) -> HeadingNodeParser:
        return cls(HeadingChunker.for_model(model, max_tokens=max_tokens, min_tokens=min_tokens), **data)

    @classmethod
    def class_name(cls) -> str:
        return "HeadingNodeParser"

    @property
    def chunker(self) -> HeadingChunker:
        """The chunker with this parser's caps."""
        if (self._chunker.max_tokens, self._chunker.min_tokens) != (self.max_tokens, self.min_tokens):
            self._chunker = HeadingChunker(self._chunker.counter, self.max_tokens, self.min_tokens)
        return self._chunker

    def _parse_nodes(self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any) -> list[BaseNode]:
        from kb.loading import SourceFormat, parse_text_as

        out: list[BaseNode] = []
        for node in nodes:
            source_format = SourceFormat(node.metadata.get("source_format", SourceFormat.MARKDOWN))
            parsed = parse_text_as(node.get_content(), source_format)
            for chunk in self.chunker.chunk(parsed):
                child = TextNode(
                    text=chunk.text,
                    metadata={**node.metadata, "header_path": list(chunk.header_path), "span": chunk.span.as_list()},
                    start_char_idx=chunk.span.start,
                    end_char_idx=chunk.span.end,
                )
                child.relationships[NodeRelationship.SOURCE] = node.as_related_node_info()
                out.append(child)
        return out
