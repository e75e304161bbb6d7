"""kb's own exceptions. Every message says what went wrong, where, and what to do about it."""

from __future__ import annotations


class KbError(Exception):
    """Base class of every error kb raises on purpose."""


class ConfigError(KbError):
    """A setting is invalid (names the setting and the accepted values)."""


class ModelNotAvailableError(KbError):
    """A model named in the settings cannot be found on this machine."""


class EmbedderMismatchError(KbError):
    """The index was built with another embedder than the one the settings name."""


class IndexNotFoundError(KbError):
    """The index folder does not hold a kb index."""


class IndexLockedError(KbError):
    """Another process holds the index open for writing."""


class LeaseLostError(IndexLockedError):
    """A writer no longer holds the server collection's writer lease (it could not renew it, or another took it)."""


class SourceError(KbError):
    """A source file cannot be read as a document (the reason is kept for the ingest summary)."""


class IndexDamagedError(KbError):
    """The store holds less than the manifest says (lost or partly lost shard); names how to repair it."""


class MassDeleteRefused(KbError):
    """A reindex would delete more of a source than ``max_delete_fraction`` allows (see ``--allow-mass-delete``)."""


class LLMUnavailableError(KbError):
    """The generator cannot be reached or answered with an error (the server's fault, not the caller's)."""


class PartialReindexError(SourceError):
    """Some sources of a reindex failed (the message names them and why); the others were reindexed, and
    ``report`` says what was done to them."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report  # an IngestReport (kb.indexing imports this module)
