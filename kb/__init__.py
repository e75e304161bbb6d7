"""kb: answers from your own documents, cited to the section they came from.

The names below are imported on first use (PEP 562), so ``import kb.parsers.rst`` in a parse worker, or the
``kb`` command before it knows what it will do, does not pay for LlamaIndex, torch or Qdrant.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Answer": "kb.citations",
    "Citation": "kb.citations",
    "Source": "kb.citations",
    "ConfigError": "kb.errors",
    "EmbedderMismatchError": "kb.errors",
    "IndexDamagedError": "kb.errors",
    "IndexLockedError": "kb.errors",
    "IndexNotFoundError": "kb.errors",
    "KbError": "kb.errors",
    "ModelNotAvailableError": "kb.errors",
    "SourceError": "kb.errors",
    "Principal": "kb.acl",
    "DocumentSource": "kb.sources",
    "FullRebuildRequired": "kb.knowledge_base",
    "Hit": "kb.knowledge_base",
    "KnowledgeBase": "kb.knowledge_base",
    "ReindexJob": "kb.knowledge_base",
    "Status": "kb.knowledge_base",
    "FusionMethod": "kb.settings",
    "LlmBackend": "kb.settings",
    "RetrievalMode": "kb.settings",
    "Settings": "kb.settings",
}

__all__ = [
    "Answer",
    "Citation",
    "ConfigError",
    "DocumentSource",
    "EmbedderMismatchError",
    "FullRebuildRequired",
    "FusionMethod",
    "Hit",
    "IndexDamagedError",
    "IndexLockedError",
    "IndexNotFoundError",
    "KbError",
    "KnowledgeBase",
    "LlmBackend",
    "ModelNotAvailableError",
    "Principal",
    "ReindexJob",
    "RetrievalMode",
    "Settings",
    "Source",
    "SourceError",
    "Status",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kb' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from kb.acl import Principal
    from kb.citations import Answer, Citation, Source
    from kb.errors import (
        ConfigError,
        EmbedderMismatchError,
        IndexDamagedError,
        IndexLockedError,
        IndexNotFoundError,
        KbError,
        ModelNotAvailableError,
        SourceError,
    )
    from kb.knowledge_base import FullRebuildRequired, Hit, KnowledgeBase, ReindexJob, Status
    from kb.settings import FusionMethod, LlmBackend, RetrievalMode, Settings
    from kb.sources import DocumentSource
