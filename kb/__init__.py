"""kb: answers from your own documents, cited to the section they came from."""

from kb.errors import (
    ConfigError,
    EmbedderMismatchError,
    IndexLockedError,
    IndexNotFoundError,
    KbError,
    ModelNotAvailableError,
    SourceError,
)
from kb.knowledge_base import Hit, KnowledgeBase, Status
from kb.settings import FusionMethod, RetrievalMode, Settings

__all__ = [
    "ConfigError",
    "EmbedderMismatchError",
    "FusionMethod",
    "Hit",
    "IndexLockedError",
    "IndexNotFoundError",
    "KbError",
    "KnowledgeBase",
    "ModelNotAvailableError",
    "RetrievalMode",
    "Settings",
    "SourceError",
    "Status",
]

__version__ = "0.1.0"
