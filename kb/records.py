"""``ChunkRecord``: the one place where a chunk maps to a Qdrant payload and back.

    >>> from kb.document import Span
    >>> record = ChunkRecord(text="Run promote.", doc_id="ops:failover.md", source="ops", path="failover.md",
    ...                      header_path=["Failover", "Promote"], span=Span(0, 12, 3, 3), acl=["sre"])
    >>> ChunkRecord.from_payload(record.to_payload()) == record
    True
    >>> record.heading
    'Failover > Promote'

Everything that shows a chunk derives from it: :class:`kb.knowledge_base.Hit`, the answer engine's
:class:`kb.citations.Source` (and so every :class:`~kb.citations.Citation`), LlamaIndex node metadata
(:meth:`to_node`), the BM25 text (:meth:`bm25_text`). Nodes that come from elsewhere — ``kb.store.add``
with LlamaIndex's own parsers — enter through :meth:`from_foreign_node`, which maps their metadata onto
the same fields (a ``"A > B"`` header path string, ``ref_doc_id``, arbitrary metadata into ``meta``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from kb.document import Span

if TYPE_CHECKING:  # LlamaIndex is imported only where nodes are made: `kb search` starts without it
    from llama_index.core.schema import BaseNode, TextNode

PATH_SEPARATOR = " > "
SOURCE_SEPARATOR = ":"
_FOREIGN_NAMESPACE = uuid.UUID("a3c0a8de-8f3e-4c61-9d07-5d2f2f0b6c55")


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk: its text, the document it belongs to, where it lies, who may read it.

    ``doc_id`` is ``source:path`` (``runbooks:deploy/rollback.md``); ``source`` is empty for documents
    indexed before sources existed (their ``doc_id`` is then the bare path). ``acl`` is ``None`` for
    chunks written before access control, which only trusted callers can read.
    """

    text: str
    doc_id: str
    source: str = ""
    path: str = ""
    doc_hash: str = ""
    chunk_index: int = 0
    title: str = ""
    header_path: list[str] = field(default_factory=list)
    span: Span = field(default_factory=lambda: Span(0, 0, 0, 0))
    anchor: str = ""
    source_format: str = ""
    url: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    text_hash: str = ""
    acl: list[str] | None = None

    @property
    def heading(self) -> str:
        """The header path as one line: ``"API Authentication > API keys > Rotating"``."""
        return PATH_SEPARATOR.join(self.header_path)

    @property
    def location(self) -> str:
        """``path:12-18`` (lines) or ``path p. 3`` (pages): where a reader finds the chunk."""
        if self.span.page_start:
            return f"{self.doc_id} {self.span.where()}"
        return f"{self.doc_id}:{self.span.line_start}-{self.span.line_end}"

    # -- payload --------------------------------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "text": self.text,
            "doc_id": self.doc_id,
            "source": self.source,
            "path": self.path,
            "doc_hash": self.doc_hash,
            "chunk_index": self.chunk_index,
            "title": self.title,
            "header_path": list(self.header_path),
            "span": self.span.as_list(),
            "anchor": self.anchor,
            "source_format": self.source_format,
            "url": self.url,
            "meta": dict(self.meta),
            "text_hash": self.text_hash,
        }
        if self.acl is not None:
            payload["acl"] = list(self.acl)
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ChunkRecord:
        """The record of a stored payload; payloads of older indexes (no ``source``/``path``) read as legacy."""
        doc_id = str(payload.get("doc_id", ""))
        header = payload.get("header_path") or []
        acl = payload.get("acl")
        return cls(
            text=str(payload.get("text", "")),
            doc_id=doc_id,
            source=str(payload.get("source", "")),
            path=str(payload.get("path") or doc_id),
            doc_hash=str(payload.get("doc_hash", "")),
            chunk_index=int(payload.get("chunk_index", 0) or 0),
            title=str(payload.get("title", "")),
            header_path=split_header_path(header),
            span=Span.from_list(list(payload.get("span") or [0, 0, 0, 0])),
            anchor=str(payload.get("anchor", "")),
            source_format=str(payload.get("source_format", "")),
            url=str(payload.get("url", "")),
            meta=dict(payload.get("meta") or {}),
            text_hash=str(payload.get("text_hash", "")),
            acl=[str(g) for g in acl] if isinstance(acl, list) else None,
        )

    def bm25_text(self) -> str:
        """What the BM25 leg indexes: the title and heading path count as words of the chunk."""
        return f"{self.title}\n{' '.join(self.header_path)}\n{self.text}"

    # -- LlamaIndex nodes -----------------------------------------------------------------------------
    def to_node(self, node_id: str) -> TextNode:
        """A LlamaIndex node whose metadata is this record's payload (without the text)."""
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        metadata = self.to_payload()
        metadata.pop("text")
        node = TextNode(
            id_=node_id,
            text=self.text,
            metadata=metadata,
            start_char_idx=self.span.start,
            end_char_idx=self.span.end,
            excluded_embed_metadata_keys=list(metadata),
            excluded_llm_metadata_keys=list(metadata),
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=self.doc_id)
        return node

    @classmethod
    def from_node(cls, node: BaseNode) -> ChunkRecord:
        """The record behind a node made by :meth:`to_node` (retrieved from kb's store)."""
        return cls.from_payload({**node.metadata, "text": node.get_content()})

    @classmethod
    def from_foreign_node(cls, node: BaseNode, source: str, acl: list[str] | None) -> tuple[str, ChunkRecord]:
        """(point id, record) for a node built outside kb (``kb.store.add``), filed under ``source``.

        Known fields are read from the node's metadata whatever their shape; everything else becomes
        front-matter-like ``meta`` (so filters find it). Ids that are not UUIDs map to a stable UUID (the store
        gives a node whose id is another source's chunk an id of its own: :meth:`kb.store.base.ChunkStore.add`).
        An ``acl`` the node carries narrows ``acl`` (the index's default for added nodes), never widens it.
        """
        metadata = dict(node.metadata or {})
        known = {f.name for f in fields(cls)}
        own = {name: metadata.pop(name) for name in list(metadata) if name in known}
        path = str(own.get("path") or node.ref_doc_id or metadata.get("file_path") or node.node_id)
        span = own.get("span")
        start = node.start_char_idx or 0
        end = node.end_char_idx or start + len(node.get_content())
        record = cls(
            text=node.get_content(),
            doc_id=f"{source}{SOURCE_SEPARATOR}{path}",
            source=source,
            path=path,
            doc_hash=str(own.get("doc_hash") or "nodes"),
            chunk_index=int(own.get("chunk_index") or 0),
            title=str(own.get("title") or metadata.get("file_name") or path),
            header_path=_header_path_of(own.get("header_path"), node.get_content()),
            span=Span.from_list(list(span))
            if isinstance(span, (list, tuple)) and len(span) >= 4
            else Span(start, end, 0, 0),
            anchor=str(own.get("anchor") or ""),
            source_format=str(own.get("source_format") or "node"),
            url=str(own.get("url") or ""),
            meta={**dict(own.get("meta") or {}), **{k: v for k, v in metadata.items() if _json_scalar(v)}},
            text_hash=str(own.get("text_hash") or ""),
            acl=_narrowed(acl, own.get("acl")),
        )
        return foreign_point_id(node.node_id), record


def split_header_path(value: Any) -> list[str]:
    """A header path from a payload or foreign metadata: a list, one ``"A > B > C"`` string, or the
    ``"/A/B/"`` of LlamaIndex's ``MarkdownNodeParser``."""
    if isinstance(value, str):
        separator = PATH_SEPARATOR.strip() if PATH_SEPARATOR.strip() in value or not value.startswith("/") else "/"
        return [part.strip() for part in value.split(separator) if part.strip()]
    if isinstance(value, (list, tuple)):
        return [str(part) for part in value]
    return []


# A Markdown heading's title runs to its last character that is not a blank or "#"; a title of one "#" stays one.
# (A lazy title, tried at each blank of a long run before the end of the line, took quadratic time.)
ATX_TITLE = r"(.(?:.*[^ \t#\n])?)[ \t#]*$"
_MARKDOWN_HEADING = re.compile(rf"\A#{{1,6}}[ \t]+{ATX_TITLE}", re.MULTILINE)


def _header_path_of(value: Any, text: str) -> list[str]:
    """A foreign node's header path. MarkdownNodeParser's ``"/A/B/"`` names the parents only, its node's own
    heading is the first line of the text; a path in kb's ``"A > B"`` form (or a list) is whole as given."""
    path = split_header_path(value)
    markdown_parents = isinstance(value, str) and value.startswith("/") and PATH_SEPARATOR not in value
    if value and not markdown_parents:
        return path
    own = _MARKDOWN_HEADING.match(text.lstrip())
    return [*path, own.group(1).strip()] if own and (not path or path[-1] != own.group(1).strip()) else path


def foreign_point_id(node_id: str) -> str:
    """Qdrant accepts UUIDs (and integers) as point ids: keep a UUID, map anything else to a stable one."""
    try:
        return str(uuid.UUID(str(node_id)))
    except ValueError:
        return str(uuid.uuid5(_FOREIGN_NAMESPACE, str(node_id)))


def _narrowed(default: list[str] | None, own: Any) -> list[str] | None:
    """The default ACL of added nodes, narrowed by the node's own ``acl`` metadata when it has one."""
    if own is None:
        return default
    from kb.acl import narrowest, normalize_groups

    return narrowest(default, normalize_groups(own, "node metadata 'acl'"))


def _json_scalar(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(isinstance(v, (str, int, float, bool)) for v in value)
    return False
