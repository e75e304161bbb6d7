"""Chunk stores: one interface (:class:`ChunkStore`), two backends, picked by ``settings.qdrant_url``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kb.manifest import SHARD_DIR
from kb.settings import Settings
from kb.sparse import Bm25Encoder
from kb.store.base import ChunkStore

LOCAL_MODE_DIR = "qdrant-local"


def open_store(
    folder: Path, settings: Settings, dimension: int, bm25: Bm25Encoder, client: Any | None = None
) -> ChunkStore:
    """The store of the index at ``folder``: the embedded engine, or the collection on a Qdrant server.

    ``client`` (a ``QdrantClient``, whatever ``qdrant_url`` says) selects the server backend over a connection
    the caller owns and may share: several stores on one client are replicas of one cluster."""
    if client is None and not settings.qdrant_url:
        from kb.store.edge import EdgeChunkStore, recover_swap

        recover_swap(folder)
        return EdgeChunkStore(folder / SHARD_DIR, dimension, bm25)
    from kb.store.server import ServerChunkStore, ServerPolicy, collection_options, connect

    owned = client is None
    client = connect(settings, str(folder / LOCAL_MODE_DIR)) if client is None else client
    return ServerChunkStore(client, collection_name(folder, settings), dimension, bm25, collection_options(settings),
                            owns_client=owned, policy=ServerPolicy.of(settings))  # fmt: skip


def collection_name(folder: Path, settings: Settings) -> str:
    """The configured collection, or one named after the index folder (``indexes/handbook`` → ``handbook``)."""
    name = settings.qdrant_collection or re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).resolve().name).strip("-")
    return name or "kb"


__all__ = ["ChunkStore", "collection_name", "open_store"]
