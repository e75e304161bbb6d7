"""Find source files under a folder, and read and parse each into a :class:`SourceDocument`.

    >>> from kb.loading import Selection, discover
    >>> found = list(discover(Path("kb/sample_kb"), Selection.from_settings(Settings())))   # doctest: +SKIP

A file that cannot be loaded never stops the run: it comes back as a skip with the reason. A folder that
cannot be listed (permissions, a network mount that dropped) is a skip too, never an empty folder: a
reindex keeps every document under it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from kb.document import ParsedDocument, check_metadata_size, shorten
from kb.errors import SourceError
from kb.settings import Settings


class SourceFormat(StrEnum):
    MARKDOWN = "markdown"
    RST = "rst"
    HTML = "html"
    TEXT = "text"
    ASCIIDOC = "asciidoc"
    PDF = "pdf"
    DOCX = "docx"
    DOC = "doc"  # old binary Word: recognised only to say why it is skipped


# Longest suffix first, so "x.rst.txt" is reST and not plain text.
_SUFFIXES: list[tuple[str, SourceFormat]] = [
    (".rst.txt", SourceFormat.RST),
    (".markdown", SourceFormat.MARKDOWN),
    (".asciidoc", SourceFormat.ASCIIDOC),
    (".adoc", SourceFormat.ASCIIDOC),
    (".md", SourceFormat.MARKDOWN),
    (".rst", SourceFormat.RST),
    (".html", SourceFormat.HTML),
    (".htm", SourceFormat.HTML),
    (".pdf", SourceFormat.PDF),
    (".docx", SourceFormat.DOCX),
    (".doc", SourceFormat.DOC),
    (".txt", SourceFormat.TEXT),
]
BINARY_FORMATS = frozenset({SourceFormat.PDF, SourceFormat.DOCX, SourceFormat.DOC})

_BOMS: list[tuple[bytes, str]] = [
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
]


@dataclass(frozen=True)
class ParseOptions:
    """What parsing one file depends on (picklable: parse workers receive it)."""

    max_file_bytes: int = 20_000_000
    max_pdf_pages: int = 2000
    asciidoc_patterns: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, asciidoc_patterns: list[str] | None = None) -> ParseOptions:
        patterns = settings.asciidoc_patterns if asciidoc_patterns is None else asciidoc_patterns
        return cls(settings.max_file_bytes, settings.max_pdf_pages, tuple(patterns))


@dataclass(frozen=True)
class Selection:
    """Which files of a folder are documents: name globs to include and exclude, and the AsciiDoc ones."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    options: ParseOptions = field(default_factory=ParseOptions)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        asciidoc_patterns: list[str] | None = None,
    ) -> Selection:
        return cls(
            tuple(settings.include if include is None else include),
            tuple(settings.exclude if exclude is None else exclude),
            ParseOptions.from_settings(settings, asciidoc_patterns),
        )


@dataclass
class SourceDocument:
    """One loaded file. ``doc_id`` is ``source:path`` (or the bare path, outside a source)."""

    doc_id: str
    path: Path
    source_format: SourceFormat
    content_hash: str
    mtime: float
    size: int
    parsed: ParsedDocument

    @property
    def title(self) -> str:
        return self.parsed.title or Path(self.doc_id.split(":", 1)[-1]).name

    @property
    def metadata(self) -> dict[str, Any]:
        return self.parsed.metadata


@dataclass(frozen=True)
class SkippedFile:
    """A file (or folder, ``path/``) left out of the index and why (one line of the ingest summary)."""

    doc_id: str
    reason: str
    # For a file a parse worker gave up on: "parse" (the parser rejected these bytes) or "limit" (stopped by
    # max_file_seconds, the memory limit, or a crash), and the hash of the bytes it read (kb.indexing.failures).
    failure: str = field(default="", compare=False, repr=False)
    content_hash: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Found:
    """One entry of a folder listing: a file (``path`` set) or a folder that could not be listed."""

    relative: str
    path: Path | None = None
    error: str = ""
    # The listing's lstat of a regular file reached through no link; ``path`` is then its real path, so
    # a plan need not resolve it again (the per-file cost of a reindex where nothing changed).
    listed: os.stat_result | None = field(default=None, compare=False, repr=False)

    @property
    def unreadable_folder(self) -> bool:
        return self.path is None


def detect_format(name: str, asciidoc_patterns: tuple[str, ...] | list[str] = ()) -> SourceFormat | None:
    lower = name.lower()
    if any(fnmatch.fnmatch(name, pattern) for pattern in asciidoc_patterns):
        return SourceFormat.ASCIIDOC
    return next((fmt for suffix, fmt in _SUFFIXES if lower.endswith(suffix)), None)


def discover(root: Path, selection: Selection, ignored: Counter[str] | None = None) -> Iterator[Found]:
    """Every file under ``root`` that the selection picks (sorted), and every folder that cannot be read;
    ``ignored`` counts the files no include pattern picks, by extension (excluded ones are meant to be left out).

    Symlinks are followed only while they stay inside ``root`` and never twice to the same folder, so
    link loops and links out of the tree are ignored. ``root`` itself unreadable is a :class:`SourceError`:
    a reindex must not take an unreadable folder for an empty one.
    """
    resolved = root.resolve()
    try:
        os.scandir(resolved).close()
    except OSError as exc:
        raise SourceError(
            f"{root}: cannot list the folder ({exc.strerror or exc}); nothing was changed. "
            "Check its permissions or mount."
        ) from exc
    errors: list[OSError] = []
    seen_dirs: set[Path] = set()
    excluded = _matcher(tuple(selection.exclude))
    included = _matcher((*selection.include, *selection.options.asciidoc_patterns))
    for dirpath, dirnames, filenames in os.walk(resolved, followlinks=True, onerror=errors.append):
        yield from _unlistable(errors, resolved)
        here = Path(dirpath)
        real = here.resolve()
        if real in seen_dirs or not real.is_relative_to(resolved):
            dirnames[:] = []
            if not real.is_relative_to(resolved):  # say so: the README promises links out are listed, not lost
                yield Found(
                    here.relative_to(resolved).as_posix() + "/",
                    None,
                    f"a link to a folder outside the source ({real}); not followed, documents indexed under it kept",
                )
            continue
        if _excluded_target(real, resolved, excluded):  # a link into an excluded folder ("archive -> ../private")
            dirnames[:] = []
            if ignored is not None:
                ignored[LINK_TO_EXCLUDED] += 1
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not excluded(d))
        folder = here.relative_to(resolved).as_posix()
        prefix = "" if folder == "." else folder + "/"
        for name in sorted(filenames):
            if excluded(name):
                continue
            if not included(name):
                if ignored is not None:
                    ignored[PurePath(name).suffix.lower() or "(no extension)"] += 1
                continue
            found = _found(prefix + name, here, real, name)
            if found.listed is None and _excluded_target(Path(os.path.realpath(found.path)), resolved, excluded):
                if ignored is not None:
                    ignored[LINK_TO_EXCLUDED] += 1
                continue
            yield found
    yield from _unlistable(errors, resolved)


LINK_TO_EXCLUDED = "(a link to an excluded name)"


def _excluded_target(real: Path, root: Path, excluded: Callable[[str], bool]) -> bool:
    """Whether ``real`` (a link's target) lies under the root at a path the exclude patterns leave out."""
    return real.is_relative_to(root) and any(excluded(part) for part in real.relative_to(root).parts)


def _found(relative: str, folder: Path, real_folder: Path, name: str) -> Found:
    """A listed file of ``folder`` (resolved: ``real_folder``); when it is a regular file, not a link, its
    real path and lstat come with it."""
    try:
        listed = os.lstat(os.path.join(real_folder, name))
    except OSError:
        return Found(relative, folder / name)  # inspect_file says why
    if stat.S_ISREG(listed.st_mode):
        return Found(relative, real_folder / name, listed=listed)
    return Found(relative, folder / name)


def _unlistable(errors: list[OSError], root: Path) -> Iterator[Found]:
    while errors:
        exc = errors.pop(0)
        where = Path(exc.filename or root)
        try:
            relative = where.relative_to(root).as_posix()
        except ValueError:
            relative = str(where)
        yield Found(
            relative.rstrip("/") + "/",
            None,
            f"folder cannot be listed ({exc.strerror or exc}); its documents are kept as indexed",
        )


@dataclass(frozen=True)
class FileInfo:
    """What a plan knows of a file before reading it: the name checks passed, its size and mtime."""

    path: Path
    size: int
    mtime: float


def inspect_file(path: Path, options: ParseOptions, root: Path | None = None, found: Found | None = None) -> FileInfo:
    """Check one file without reading it; raises :class:`SourceError` with a reason a person can act on.

    With ``root``, a path that resolves outside it (a symlink out of the tree) is refused. ``found``: the
    listing's entry for it, whose lstat of a regular file reached through no link saves resolving the path."""
    if detect_format(path.name, options.asciidoc_patterns) is None:
        raise SourceError(f"unsupported file type; supported: {', '.join(s for s, _ in _SUFFIXES)}")
    if found is not None and found.listed is not None:
        check_name(found.relative)
        real, status = found.path or path, found.listed
    else:
        check_name(Path(os.path.relpath(path, root)) if root is not None else Path(path.name))
        try:
            real = path.resolve(strict=True)
            if root is not None and not real.is_relative_to(root.resolve()):
                raise SourceError("symlink to a file outside the ingested folder; not followed")
            status = real.stat()
        except OSError as exc:
            raise SourceError(f"cannot read: {exc.strerror or exc}") from exc
        except RuntimeError as exc:  # Path.resolve's "Symlink loop from ..." (Python 3.11)
            raise SourceError(f"cannot read: {exc}") from exc
    if not stat.S_ISREG(status.st_mode):
        raise SourceError("not a regular file")
    if status.st_size > options.max_file_bytes:
        raise SourceError(
            f"{status.st_size:,} bytes is over max_file_bytes={options.max_file_bytes:,}; "
            "raise the setting to include it"
        )
    return FileInfo(real, status.st_size, status.st_mtime)


def hash_file(info: FileInfo) -> str:
    """sha256 of the file, read in blocks (a plan holds hashes, never whole files)."""
    digest = hashlib.sha256()
    try:
        with info.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from exc
    return digest.hexdigest()


@dataclass(frozen=True)
class RawFile:
    """A file's bytes and what identifies this version of it; ``real``: the path read, links resolved."""

    path: Path
    data: bytes
    content_hash: str
    mtime: float
    size: int
    real: Path | None = None


def read_file(path: Path, options: ParseOptions | Settings, root: Path | None = None) -> RawFile:
    """Read one file (checks as :func:`inspect_file`), with the hash of exactly the bytes read."""
    if isinstance(options, Settings):
        options = ParseOptions.from_settings(options)
    info = inspect_file(path, options, root)
    try:
        data = info.path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > options.max_file_bytes:  # it grew since it was checked
        raise SourceError(f"{len(data):,} bytes is over max_file_bytes={options.max_file_bytes:,}")
    return RawFile(path, data, hashlib.sha256(data).hexdigest(), info.mtime, len(data), info.path)


def check_name(relative: Path | str) -> None:
    """Refuse names that cannot be stored or shown safely: non-UTF-8 bytes, control characters."""
    name = str(relative)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SourceError("file name is not valid UTF-8; rename the file") from exc
    if _CONTROL.search(name):
        raise SourceError("file name contains control characters (a newline?); rename the file")


def _text_parser(parse: Callable[[str], ParsedDocument]) -> Callable[[bytes, ParseOptions], ParsedDocument]:
    return lambda data, _options: parse(decode(data))


def _parse_doc(_data: bytes, _options: ParseOptions) -> ParsedDocument:
    raise SourceError("old binary Word format (.doc) is not read; save the file as .docx to include it")


def _parsers() -> dict[SourceFormat, Callable[[bytes, ParseOptions], ParsedDocument]]:
    from kb.parsers.asciidoc import parse_asciidoc
    from kb.parsers.docx import parse_docx
    from kb.parsers.html import parse_html
    from kb.parsers.markdown import parse_markdown
    from kb.parsers.pdf import parse_pdf
    from kb.parsers.rst import parse_rst
    from kb.parsers.text import parse_text

    return {
        SourceFormat.MARKDOWN: _text_parser(parse_markdown),
        SourceFormat.RST: _text_parser(parse_rst),
        SourceFormat.HTML: _text_parser(parse_html),
        SourceFormat.TEXT: _text_parser(parse_text),
        SourceFormat.ASCIIDOC: _text_parser(parse_asciidoc),
        SourceFormat.PDF: lambda data, options: parse_pdf(data, options.max_pdf_pages),
        SourceFormat.DOCX: lambda data, options: parse_docx(data, max(5 * options.max_file_bytes, 50_000_000)),
        SourceFormat.DOC: _parse_doc,
    }


_PARSERS: dict[SourceFormat, Callable[[bytes, ParseOptions], ParsedDocument]] = {}


def parse_bytes(data: bytes, source_format: SourceFormat, options: ParseOptions | None = None) -> ParsedDocument:
    """Parse a file's bytes as ``source_format`` (text formats are decoded first)."""
    if not _PARSERS:
        _PARSERS.update(_parsers())
    try:
        document = _PARSERS[source_format](data, options or ParseOptions())
    except RecursionError as exc:
        raise SourceError("structure nested too deeply to parse") from exc
    document.title = shorten(document.title)  # parsers set it last; every chunk carries it
    check_metadata_size(document.metadata, "front matter / metadata")
    return document


def parse_text_as(text: str, source_format: SourceFormat) -> ParsedDocument:
    """Parse already-decoded text (the LlamaIndex ``NodeParser`` face of the chunker)."""
    if source_format in BINARY_FORMATS:
        raise SourceError(f"{source_format.value} is a binary format; parse its bytes with parse_bytes")
    return parse_bytes(text.encode("utf-8"), source_format)


def parse_file(raw: RawFile, doc_id: str, options: ParseOptions | None = None) -> SourceDocument:
    """Decode and parse a file read by :func:`read_file`."""
    options = options or ParseOptions()
    source_format = detect_format(raw.path.name, options.asciidoc_patterns)
    if source_format is None:
        raise SourceError("unsupported file type")
    parsed = parse_bytes(raw.data, source_format, options)
    return SourceDocument(doc_id, raw.path, source_format, raw.content_hash, raw.mtime, raw.size, parsed)


def load_file(path: Path, doc_id: str, settings: Settings, root: Path | None = None) -> SourceDocument:
    """Read, decode and parse one file. Raises :class:`SourceError` with a reason a person can act on."""
    options = ParseOptions.from_settings(settings)
    return parse_file(read_file(path, options, root), doc_id, options)


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
    """Load every selected file under ``root`` (doc ids: paths relative to it)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise SourceError(f"{root}: not a folder; pass the folder that holds the documents")
    documents: list[SourceDocument] = []
    skipped: list[SkippedFile] = []
    for found in discover(root_path, Selection.from_settings(settings)):
        if found.path is None:
            skipped.append(SkippedFile(found.relative, found.error))
            continue
        try:
            documents.append(load_file(found.path, found.relative, settings, root_path))
        except SourceError as exc:
            skipped.append(SkippedFile(found.relative, str(exc)))
    return documents, skipped


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a name matches any of the globs: one compiled expression instead of a loop over them."""
    if not patterns:
        return lambda _name: False
    expression = re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
    return lambda name: expression.match(name) is not None


def _normalise(text: str) -> str:
    # Offsets are into this text; one newline convention keeps line numbers and spans consistent.
    return text.replace("\r\n", "\n").replace("\r", "\n")
