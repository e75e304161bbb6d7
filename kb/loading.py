"""Find source files under a folder and load each into a :class:`SourceDocument`.

    >>> from kb.loading import load_folder
    >>> from kb.settings import Settings
    >>> docs, skipped = load_folder("kb/sample_kb", Settings())
    >>> docs[0].doc_id, docs[0].source_format          # doctest: +SKIP
    ('api/authentication.md', <SourceFormat.MARKDOWN: 'markdown'>)

A file that cannot be loaded never stops the run: it comes back in ``skipped`` with the reason.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from kb.document import ParsedDocument
from kb.errors import SourceError
from kb.parsers.html import parse_html
from kb.parsers.markdown import parse_markdown
from kb.parsers.rst import parse_rst
from kb.parsers.text import parse_text
from kb.settings import Settings


class SourceFormat(StrEnum):
    MARKDOWN = "markdown"
    RST = "rst"
    HTML = "html"
    TEXT = "text"


PARSERS: dict[SourceFormat, Callable[[str], ParsedDocument]] = {
    SourceFormat.MARKDOWN: parse_markdown,
    SourceFormat.RST: parse_rst,
    SourceFormat.HTML: parse_html,
    SourceFormat.TEXT: parse_text,
}

# Longest suffix first, so "x.rst.txt" is reST and not plain text.
_SUFFIXES: list[tuple[str, SourceFormat]] = [
    (".rst.txt", SourceFormat.RST),
    (".markdown", SourceFormat.MARKDOWN),
    (".md", SourceFormat.MARKDOWN),
    (".rst", SourceFormat.RST),
    (".html", SourceFormat.HTML),
    (".htm", SourceFormat.HTML),
    (".txt", SourceFormat.TEXT),
]

_BOMS: list[tuple[bytes, str]] = [
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
]


@dataclass
class SourceDocument:
    """One loaded file. ``doc_id`` is its path relative to the ingested root, with ``/`` separators."""

    doc_id: str
    path: Path
    source_format: SourceFormat
    content_hash: str
    mtime: float
    size: int
    parsed: ParsedDocument

    @property
    def title(self) -> str:
        return self.parsed.title or Path(self.doc_id).name

    @property
    def metadata(self) -> dict[str, Any]:
        return self.parsed.metadata


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the index and why (one line of the ingest summary)."""

    doc_id: str
    reason: str


def detect_format(name: str) -> SourceFormat | None:
    lower = name.lower()
    return next((fmt for suffix, fmt in _SUFFIXES if lower.endswith(suffix)), None)


def discover(root: Path, settings: Settings) -> Iterator[tuple[str, Path]]:
    """(doc_id, path) of every file under ``root`` that the include/exclude patterns select, sorted.

    Symlinks are followed only while they stay inside ``root`` and never twice to the same folder, so
    link loops and links out of the tree are ignored.
    """
    root = root.resolve()
    seen_dirs: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen_dirs or not real.is_relative_to(root):
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _matches(d, settings.exclude))
        for name in sorted(filenames):
            if _matches(name, settings.exclude) or not _matches(name, settings.include):
                continue
            path = here / name
            yield path.relative_to(root).as_posix(), path


@dataclass(frozen=True)
class RawFile:
    """A file's bytes and what identifies this version of it."""

    path: Path
    data: bytes
    content_hash: str
    mtime: float
    size: int


def read_file(path: Path, settings: Settings, root: Path | None = None) -> RawFile:
    """Read one file (cheap: no parsing), so unchanged documents can be recognised by content hash.

    With ``root``, a path that resolves outside it (a symlink out of the tree) is refused.
    """
    if detect_format(path.name) is None:
        raise SourceError(f"unsupported file type; supported: {', '.join(s for s, _ in _SUFFIXES)}")
    check_name(Path(os.path.relpath(path, root)) if root is not None else Path(path.name))
    try:
        real = path.resolve(strict=True)
        if root is not None and not real.is_relative_to(root.resolve()):
            raise SourceError("symlink to a file outside the ingested folder; not followed")
        stat = real.stat()
        if not real.is_file():
            raise SourceError("not a regular file")
        if stat.st_size > settings.max_file_bytes:
            raise SourceError(
                f"{stat.st_size:,} bytes is over max_file_bytes={settings.max_file_bytes:,}; "
                "raise the setting to include it"
            )
        data = real.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from exc
    return RawFile(path, data, hashlib.sha256(data).hexdigest(), stat.st_mtime, len(data))


def check_name(relative: Path) -> None:
    """Refuse names that cannot be stored or shown safely: non-UTF-8 bytes, control characters."""
    name = str(relative)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SourceError("file name is not valid UTF-8; rename the file") from exc
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise SourceError("file name contains control characters (a newline?); rename the file")


def parse_file(raw: RawFile, doc_id: str) -> SourceDocument:
    """Decode and parse a file read by :func:`read_file`."""
    source_format = detect_format(raw.path.name)
    assert source_format is not None  # read_file checked it
    text = decode(raw.data)
    try:
        parsed = PARSERS[source_format](text)
    except RecursionError as exc:
        raise SourceError("structure nested too deeply to parse") from exc
    return SourceDocument(doc_id, raw.path, source_format, raw.content_hash, raw.mtime, raw.size, parsed)


def load_file(path: Path, doc_id: str, settings: Settings, root: Path | None = None) -> SourceDocument:
    """Read, decode and parse one file. Raises :class:`SourceError` with a reason a person can act on."""
    return parse_file(read_file(path, settings, root), doc_id)


def decode(data: bytes) -> str:
    """Bytes → text with normalised newlines; binary or undecodable data raises :class:`SourceError`."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _normalise(data.decode(encoding))
            except UnicodeDecodeError as exc:
                raise SourceError(f"has a {encoding} byte-order mark but is not valid {encoding}") from exc
    if b"\x00" in data[:8192]:
        raise SourceError("binary file (NUL bytes); only text documents are ingested")
    try:
        return _normalise(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); re-save the file as UTF-8"
        ) from exc


def load_folder(root: str | Path, settings: Settings) -> tuple[list[SourceDocument], list[SkippedFile]]:
    """Load every selected file under ``root``."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise SourceError(f"{root}: not a folder; pass the folder that holds the documents")
    documents: list[SourceDocument] = []
    skipped: list[SkippedFile] = []
    for doc_id, path in discover(root_path, settings):
        try:
            documents.append(load_file(path, doc_id, settings, root_path))
        except SourceError as exc:
            skipped.append(SkippedFile(doc_id, str(exc)))
    return documents, skipped


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _normalise(text: str) -> str:
    # Offsets are into this text; one newline convention keeps line numbers and spans consistent.
    return text.replace("\r\n", "\n").replace("\r", "\n")
