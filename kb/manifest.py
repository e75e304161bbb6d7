"""What an index records about itself: how it was built (``index.json``) and what it holds (the manifest:
one entry per document with its content hash, chunk count, source and readers).

The manifest is the truth the store is checked against, so it must be durable and cheap to change:

- each :meth:`Manifest.commit` writes only the entries that changed (O(changed documents)), in one
  durable transaction — SQLite (``manifest.sqlite``, synchronous=FULL) in an embedded index folder, one
  point per document in the state collection on a Qdrant server;
- every entry is validated on read: a file with a missing or mistyped field is an :class:`IndexNotFoundError`
  that names the file, the document and the field, never a traceback;
- a ``manifest.json`` of an older index is imported once (validated the same way), then renamed.

``index.json`` is small and written atomically (temp file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as validated_dataclass

from kb.errors import IndexNotFoundError

INDEX_FILE = "index.json"
LEGACY_MANIFEST_FILE = "manifest.json"
MANIFEST_DB = "manifest.sqlite"
SHARD_DIR = "shard"
INDEX_FORMAT = 2
_POINT_NAMESPACE = uuid.UUID("6f1c1f8e-3a4b-4f0e-9a51-2d8f3c1b7e42")


def point_id(doc_id: str, doc_hash: str, chunk_index: int) -> str:
    """Stable id of a chunk; a new version of a document gets new ids, so old and new can coexist."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{doc_id}\0{doc_hash}\0{chunk_index}"))


@validated_dataclass(config=ConfigDict(extra="forbid"))
class DocumentEntry:
    """One indexed document. ``acl`` is what its chunks carry (``None``: indexed before access control)."""

    doc_hash: str
    chunks: int
    mtime: float
    size: int
    source_format: str
    title: str
    acl: list[str] | None = None
    own_acl: list[str] | None = None  # its own (front-matter) acl, so ACL-only changes need no re-parse
    source: str = ""  # "" for documents indexed before sources existed
    path: str = ""  # relative to the source folder ("" → the doc id itself, for legacy entries)
    fingerprint: str = ""  # the source settings its payload was written with (see DocumentSource.fingerprint)
    real: str = ""  # its real path under the source root when listed through a link (its rules apply too)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ENTRY = TypeAdapter(DocumentEntry)
_LEGACY = TypeAdapter(dict[str, DocumentEntry])


def parse_entry(data: Any, where: str, doc_id: str) -> DocumentEntry:
    try:
        return _ENTRY.validate_python(data)
    except ValidationError as exc:
        raise IndexNotFoundError(_describe(exc, where, doc_id)) from exc


class ManifestBackend(Protocol):
    """Where a manifest lives: SQLite in the index folder, or points of the server's state collection."""

    def load(self) -> tuple[dict[str, DocumentEntry], float]: ...

    def apply(self, put: dict[str, DocumentEntry], delete: list[str], updated_at: float) -> None:
        """Durably replace the ``put`` entries and remove the ``delete`` ones, in one transaction."""

    def close(self) -> None: ...


class Manifest:
    """The documents of an index. Read ``documents`` freely; change it only through :meth:`commit`."""

    def __init__(self, backend: ManifestBackend | None = None) -> None:
        self._backend = backend
        self._lock = threading.RLock()
        self.documents: dict[str, DocumentEntry] = {}
        self.updated_at = 0.0
        if backend is not None:
            self.documents, self.updated_at = backend.load()

    def commit(self, put: dict[str, DocumentEntry] | None = None, delete: Iterable[str] = ()) -> None:
        """Make ``put`` and the removal of ``delete`` durable, then visible (O(changes))."""
        put = dict(put or {})
        gone = [d for d in delete if d not in put]
        with self._lock:
            updated_at = time.time()
            if self._backend is not None:
                self._backend.apply(put, gone, updated_at)
            documents = dict(self.documents)  # readers iterating the old dict are never disturbed
            documents.update(put)
            for doc_id in gone:
                documents.pop(doc_id, None)
            self.documents, self.updated_at = documents, updated_at

    def reload(self) -> None:
        """Read the entries again (a writer taking a server's lease: another host may have committed since)."""
        if self._backend is None:
            return
        with self._lock:
            self.documents, self.updated_at = self._backend.load()

    def snapshot(self) -> dict[str, DocumentEntry]:
        """The entries as of now (``documents`` is replaced, never mutated, on commit: safe to iterate)."""
        return self.documents

    def of_source(self, source: str) -> dict[str, DocumentEntry]:
        return {d: e for d, e in self.documents.items() if e.source == source}

    def total_chunks(self) -> int:
        return sum(e.chunks for e in self.documents.values())

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


class SqliteManifest:
    """The manifest of an embedded index: ``manifest.sqlite`` in the index folder (one row per document)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST_DB
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, entry TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise IndexNotFoundError(
                f"{self.path}: not a readable manifest ({exc}); restore it from a backup or rebuild the index with "
                "kb reindex --full"
            ) from exc
        self._import_legacy(folder / LEGACY_MANIFEST_FILE)

    def load(self) -> tuple[dict[str, DocumentEntry], float]:
        try:
            rows = self._db.execute("SELECT doc_id, entry FROM documents").fetchall()
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise IndexNotFoundError(
                f"{self.path}: unreadable ({exc}); rebuild the index with kb reindex --full"
            ) from exc
        documents = {}
        for doc_id, text in rows:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise IndexNotFoundError(f"{self.path}: the entry of {doc_id!r} is not JSON ({exc})") from exc
            documents[doc_id] = parse_entry(data, str(self.path), doc_id)
        return documents, float(meta.get("updated_at", 0.0))

    def apply(self, put: dict[str, DocumentEntry], delete: list[str], updated_at: float) -> None:
        with self._db:  # one transaction: all of it, or none of it
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO documents VALUES (?, ?)",
                [(d, json.dumps(e.as_dict(), sort_keys=True)) for d, e in put.items()],
            )
            self._db.executemany("DELETE FROM documents WHERE doc_id = ?", [(d,) for d in delete])
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('updated_at', ?)", (repr(updated_at),))

    def close(self) -> None:
        self._db.close()

    def _import_legacy(self, legacy: Path) -> None:
        """Move an older index's ``manifest.json`` into the database, once (validated like any entry)."""
        if not legacy.is_file():
            return
        data = read_json_object(legacy)
        documents = data.get("documents")
        if not isinstance(documents, dict):
            raise IndexNotFoundError(
                f"{legacy}: field 'documents' is missing or not an object; restore the file from a backup or "
                "rebuild the index with kb reindex --full"
            )
        try:
            entries = _LEGACY.validate_python(documents)
        except ValidationError as exc:
            raise IndexNotFoundError(_describe(exc, str(legacy), None, keyed=True)) from exc
        self.apply(entries, [], float(data.get("updated_at", 0.0) or 0.0))
        os.replace(legacy, legacy.with_name(LEGACY_MANIFEST_FILE + ".imported"))
        fsync_folder(legacy.parent)


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
            return cls(**TypeAdapter(_IndexInfoFields).validate_python(data).__dict__)
        except ValidationError as exc:
            raise IndexNotFoundError(_describe(exc, f"{target}/{INDEX_FILE}", None)) from exc

    @classmethod
    def exists(cls, target: StateStore | Path) -> bool:
        return _state(target).read_state(INDEX_FILE) is not None

    def write(self, target: StateStore | Path) -> None:
        _state(target).write_state(INDEX_FILE, asdict(self))


@validated_dataclass(config=ConfigDict(extra="forbid"))
class _IndexInfoFields:
    embedder: dict[str, Any]
    chunking: dict[str, Any]
    bm25: dict[str, Any]
    created_at: float = 0.0
    format: int = 1


class StateStore(Protocol):
    """Where an index keeps small JSON documents (``index.json``, ``sources.json``, the ``DIRTY`` journal):
    files in the index folder (embedded engine) or the server collection's state collection."""

    def read_state(self, name: str) -> dict[str, Any] | None: ...

    def write_state(self, name: str, data: dict[str, Any]) -> None: ...

    def delete_state(self, name: str) -> None: ...


@dataclass
class FolderState:
    """State as JSON files in a folder, each write and removal durable before it returns."""

    folder: Path

    def read_state(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        return read_json_object(path) if path.exists() else None

    def write_state(self, name: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.folder / name, data)

    def delete_state(self, name: str) -> None:
        path = self.folder / name
        if path.exists():
            path.unlink()
            fsync_folder(self.folder)

    def names(self) -> Iterator[str]:
        return (p.name for p in self.folder.iterdir() if p.is_file())


def _state(target: StateStore | Path) -> StateStore:
    return FolderState(target) if isinstance(target, Path) else target


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexNotFoundError(f"{path}: unreadable ({exc}); rebuild the index with kb reindex --full") from exc
    if not isinstance(data, dict):
        raise IndexNotFoundError(f"{path}: not a JSON object; rebuild the index with kb reindex --full")
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` so that after a crash or power loss ``path`` holds the old or the new JSON, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; state files are as readable as any other
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)  # the rename itself is durable only once the folder is synced
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: ValidationError, where: str, doc_id: str | None, keyed: bool = False) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if keyed and loc:
        doc_id, loc = loc[0], loc[1:]
    what = f"the entry of {doc_id!r}" if doc_id else "it"
    field_name = ".".join(loc) or "?"
    return (
        f"{where}: {what} is invalid: field {field_name!r}: {err['msg']}"
        + (f" ({len(exc.errors())} problems in all)" if len(exc.errors()) > 1 else "")
        + ". Restore the file from a backup, or rebuild the index with kb reindex --full."
    )
