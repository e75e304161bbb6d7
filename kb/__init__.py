"""kb: answers from your own documents, cited to the section they came from."""

from kb.acl import Principal
from kb.citations import Answer, Citation, Source
from kb.errors import (
    ConfigError,
    EmbedderMismatchError,
    IndexLockedError,
    IndexNotFoundError,
    KbError,
    ModelNotAvailableError,
    SourceError,
)
from kb.knowledge_base import FullRebuildRequired, Hit, KnowledgeBase, ReindexJob, Status
from kb.settings import FusionMethod, LlmBackend, RetrievalMode, Settings

__all__ = [
    "Answer",
    "Citation",
    "ConfigError",
    "EmbedderMismatchError",
    "FullRebuildRequired",
    "FusionMethod",
    "Hit",
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

__version__ = "0.1.0"
