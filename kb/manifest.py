"""What an index folder records about itself: how it was built (``index.json``) and what it holds
(``manifest.json``: one entry per document with its content hash and chunk count).

Both are written atomically (temp file + rename), so a crash leaves the old or the new file, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kb.errors import IndexNotFoundError

INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shard"
INDEX_FORMAT = 1
_POINT_NAMESPACE = uuid.UUID("6f1c1f8e-3a4b-4f0e-9a51-2d8f3c1b7e42")


def point_id(doc_id: str, doc_hash: str, chunk_index: int) -> str:
    """Stable id of a chunk; a new version of a document gets new ids, so old and new can coexist."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{doc_id}\0{doc_hash}\0{chunk_index}"))


class StateStore(Protocol):
    """Where an index keeps ``index.json`` and ``manifest.json``: files in the index folder (embedded
    engine) or the server collection's state collection, so every replica reads the same."""

    def read_state(self, name: str) -> dict[str, Any] | None: ...

    def write_state(self, name: str, data: dict[str, Any]) -> None: ...


@dataclass
class FolderState:
    """State as JSON files in a folder, written atomically."""

    folder: Path

    def read_state(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexNotFoundError(f"{path}: unreadable ({exc}); rebuild the index with kb reindex --full") from exc
        if not isinstance(data, dict):
            raise IndexNotFoundError(f"{path}: not a JSON object; rebuild the index with kb reindex --full")
        return data

    def write_state(self, name: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.folder / name, data)


def _state(target: StateStore | Path) -> StateStore:
    return FolderState(target) if isinstance(target, Path) else target


@dataclass
class DocumentEntry:
    doc_hash: str
    chunks: int
    mtime: float
    size: int
    source_format: str
    title: str
    acl: list[str] | None = None  # groups stored on its chunks (None: indexed before access control)
    own_acl: list[str] | None = None  # its front-matter acl, so ACL-only changes need no re-parse


@dataclass
class IndexInfo:
    """How the index was built; a different embedder or BM25 setup cannot share it."""

    embedder: dict[str, Any]
    chunking: dict[str, Any]
    bm25: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    format: int = INDEX_FORMAT

    @classmethod
    def read(cls, target: StateStore | Path) -> IndexInfo:
        data = _state(target).read_state(INDEX_FILE)
        if data is None:
            raise IndexNotFoundError(f"{target}: no {INDEX_FILE}; not a kb index (kb ingest DIR --kb PATH creates one)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise IndexNotFoundError(f"{target}: {INDEX_FILE} unreadable ({exc}); rebuild the index") from exc

    @classmethod
    def exists(cls, target: StateStore | Path) -> bool:
        return _state(target).read_state(INDEX_FILE) is not None

    def write(self, target: StateStore | Path) -> None:
        _state(target).write_state(INDEX_FILE, asdict(self))


@dataclass
class Manifest:
    documents: dict[str, DocumentEntry] = field(default_factory=dict)
    updated_at: float = 0.0

    @classmethod
    def read(cls, target: StateStore | Path) -> Manifest:
        data = _state(target).read_state(MANIFEST_FILE)
        if data is None:
            return cls()
        return cls({k: DocumentEntry(**v) for k, v in data["documents"].items()}, data.get("updated_at", 0.0))

    def write(self, target: StateStore | Path) -> None:
        self.updated_at = time.time()
        _state(target).write_state(
            MANIFEST_FILE,
            {"updated_at": self.updated_at, "documents": {k: asdict(v) for k, v in sorted(self.documents.items())}},
        )


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
