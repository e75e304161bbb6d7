"""Chunk stores: one interface (:class:`ChunkStore`), two backends, picked by ``settings.qdrant_url``."""

from __future__ import annotations

import re
from pathlib import Path

from kb.manifest import SHARD_DIR
from kb.settings import Settings
from kb.sparse import Bm25Encoder
from kb.store.base import ChunkStore

LOCAL_MODE_DIR = "qdrant-local"


def open_store(folder: Path, settings: Settings, dimension: int, bm25: Bm25Encoder) -> ChunkStore:
    """The store of the index at ``folder``: the embedded engine, or the collection on a Qdrant server."""
    if not settings.qdrant_url:
        from kb.store.edge import EdgeChunkStore, recover_swap

        recover_swap(folder)
        return EdgeChunkStore(folder / SHARD_DIR, dimension, bm25)
    from kb.store.server import ServerChunkStore, collection_options, connect

    client = connect(settings, str(folder / LOCAL_MODE_DIR))
    return ServerChunkStore(client, collection_name(folder, settings), dimension, bm25, collection_options(settings))


def collection_name(folder: Path, settings: Settings) -> str:
    """The configured collection, or one named after the index folder (``indexes/handbook`` → ``handbook``)."""
    name = settings.qdrant_collection or re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).resolve().name).strip("-")
    return name or "kb"


__all__ = ["ChunkStore", "collection_name", "open_store"]
