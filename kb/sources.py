"""Sources: the named places an index's documents come from, each with its own settings.

    kb.add_source("runbooks", "~/src/runbooks", url="https://git.example.com/ops/runbooks/blob/main/{path}#{anchor}")
    kb.add_source("handbook", "~/exports/handbook-html", acl=["staff"])
    kb.reindex(source="runbooks")          # only that source's documents are planned, written or deleted

A document's id is ``source:path`` (``runbooks:deploy/rollback.md``), so two folders with the same file
names never collide, and a reindex of one source never deletes another's documents. Sources live in the
index's state (``sources.json``, next to the manifest; on a Qdrant server in the state collection) and may
also be declared in ``kb.toml`` as ``[[sources]]`` tables, which win over the stored copy of the same name.
A plain ``kb.ingest(folder)`` / ``kb.reindex(folder)`` names the folder as a source (its base name).

Per source: ``include``/``exclude`` globs (default: the settings'), ``acl`` — the groups that may read its
documents, a ceiling that no document can widen (see :mod:`kb.acl`) — ``acl_file`` (rules, default
``kb-acl.toml`` in the folder), ``metadata`` added to every document, a ``url`` template for citations
(``{path}``, ``{stem}``, ``{anchor}``, ``{source}``; PDFs get ``#page=N``) with ``anchor_style`` saying how
the publishing tool slugs headings, and ``asciidoc_patterns`` for files such as git-doc's ``*.txt``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kb.acl import normalize_groups
from kb.errors import ConfigError, SourceError
from kb.parsers.frontmatter import storable_metadata

if TYPE_CHECKING:
    from kb.records import ChunkRecord

SOURCES_STATE = "sources.json"
NODES_SOURCE = "nodes"  # documents added as LlamaIndex nodes through kb.store.add
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class AnchorStyle(StrEnum):
    """How the tool that publishes a source turns a heading into a URL fragment."""

    GITHUB = "github"  # GitHub / GitLab Markdown: lowercase, punctuation dropped, spaces → '-'
    MKDOCS = "mkdocs"  # Python-Markdown toc: ASCII-folded, punctuation dropped, runs of '-'/space → '-'
    SPHINX = "sphinx"  # docutils make_id: ASCII, every non-alphanumeric run → '-', no leading digits


class SourceKind(StrEnum):
    FOLDER = "folder"  # files on disk, mirrored by reindex
    NODES = "nodes"  # LlamaIndex nodes added through kb.store.add: never reindexed from a folder


class DocumentSource(BaseModel):
    """One source: a named folder and the settings its documents are indexed with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Letters, digits, '.', '_' and '-'; the prefix of every document id.")
    path: str = Field("", description="The folder (stored absolute); empty for a nodes source.")
    kind: SourceKind = SourceKind.FOLDER
    include: list[str] | None = Field(None, description="File name globs to ingest; empty: the settings' include.")
    exclude: list[str] | None = Field(None, description="File or folder name globs to leave out; empty: settings'.")
    acl: list[str] | None = Field(
        None, description="Groups that may read this source's documents: a ceiling documents can only narrow."
    )
    acl_file: str = Field("kb-acl.toml", description="ACL rules file, relative to the folder (or absolute).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Fields added to every document.")
    url: str = Field("", description="Citation URL template: {path}, {stem}, {anchor}, {source}.")
    anchor_style: AnchorStyle = AnchorStyle.GITHUB
    asciidoc_patterns: list[str] = Field(
        default_factory=list, description="Extra file name globs read as AsciiDoc (e.g. ['*.txt'] for git-doc)."
    )
    origin: str = Field("api", description="'kb.toml' when declared there (read-only here), else 'api'.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a source name: use letters, digits, '.', '_' or '-' (64 at most), no ':'"
            )
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("acl", mode="before")
    @classmethod
    def _valid_acl(cls, value: Any) -> Any:
        try:
            return None if value is None else normalize_groups(value, "acl")
        except ConfigError as exc:  # a ValueError, so pydantic names the field (sources.0.acl) and the file
            raise ValueError(str(exc)) from None

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return storable_metadata(value)
        except SourceError as exc:  # a ValueError, so pydantic names the field (sources.0.metadata) and the file
            raise ValueError(str(exc).replace("front matter", "metadata", 1)) from None

    @field_validator("url")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        try:
            value.format(path="p", stem="s", anchor="a", source="n", page=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"url template {value!r}: {exc}; use only {{path}}, {{stem}}, {{anchor}}, {{source}}, {{page}}"
            ) from None
        return value

    @property
    def folder(self) -> Path:
        return Path(self.path)

    @property
    def acl_rules_path(self) -> Path:
        rules = Path(self.acl_file).expanduser()
        return rules if rules.is_absolute() else self.folder / rules

    def doc_id(self, path: str) -> str:
        return f"{self.name}:{path}"

    def fingerprint(self) -> str:
        """What, besides a file's bytes, shapes its stored payload (URLs, added metadata, format choice).

        A document indexed under another fingerprint is rewritten on the next reindex — re-chunked, its
        vectors reused — so changing a URL template or the metadata needs no re-embedding."""
        shape = {
            "url": self.url,
            "anchor_style": self.anchor_style.value,
            "metadata": self.metadata,
            "asciidoc_patterns": self.asciidoc_patterns,
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def url_for(self, record: ChunkRecord) -> str:
        """The URL a citation of ``record`` links to: the document's own ``url``, else the template."""
        page = record.span.page_start
        if record.url:
            base = record.url
        elif self.url:
            anchor = record.anchor or slugify(record.header_path[-1] if record.header_path else "", self.anchor_style)
            base = self.url.format(
                path=quote(record.path, safe="/"),
                stem=quote(_stem(record.path), safe="/"),
                anchor=quote(anchor, safe="-_.~"),
                source=self.name,
                page=page or "",
            ).rstrip("#")
        else:
            return ""
        if page and "#" not in base:
            base += f"#page={page}"
        return base


@dataclass
class SourceStatus:
    """What the last reindex of a source did (shown by ``kb source list``)."""

    last_reindex: float = 0.0
    summary: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)
    rules_file: bool | None = None  # whether it read the source's ACL rules file (None: not recorded)

    def as_dict(self) -> dict[str, Any]:
        return {
            "last_reindex": self.last_reindex,
            "summary": self.summary,
            "skipped": self.skipped,
            "rules_file": self.rules_file,
        }


class StateStore(Protocol):
    def read_state(self, name: str) -> dict[str, Any] | None: ...

    def write_state(self, name: str, data: dict[str, Any]) -> None: ...


class SourceRegistry:
    """The sources of one index: stored ones (``kb source add``) merged with those ``kb.toml`` declares."""

    def __init__(
        self, state: StateStore, declared: list[DocumentSource] | None = None, base: Path | None = None
    ) -> None:
        """``declared`` come from kb.toml; their relative paths are relative to ``base`` (the index folder)."""
        self._state = state
        self.sources: dict[str, DocumentSource] = {}
        self.status: dict[str, SourceStatus] = {}
        data = state.read_state(SOURCES_STATE) or {}
        for n, raw in enumerate(data.get("sources", [])):
            try:
                source = DocumentSource.model_validate(raw)
            except ValidationError as exc:
                raise ConfigError(f"{SOURCES_STATE}: source {n + 1} is invalid: {_first_error(exc)}") from exc
            self.sources[source.name] = source
        for name, raw in (data.get("status") or {}).items():
            if isinstance(raw, dict):
                self.status[name] = SourceStatus(
                    float(raw.get("last_reindex", 0.0)),
                    str(raw.get("summary", "")),
                    list(raw.get("skipped", [])),
                    raw["rules_file"] if isinstance(raw.get("rules_file"), bool) else None,
                )
        changed = False
        for source in declared or []:
            folder = Path(source.path).expanduser()
            if base is not None and not folder.is_absolute():
                folder = base / folder
            declared_source = source.model_copy(update={"path": _absolute(str(folder)), "origin": "kb.toml"})
            if self.sources.get(source.name) != declared_source:
                self.sources[source.name] = declared_source
                changed = True
        if changed:
            self.save()

    def get(self, name: str) -> DocumentSource:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none yet"
            raise ConfigError(f"no source named {name!r} (sources: {known}); add it with kb source add") from None

    def for_folder(self, folder: Path) -> DocumentSource | None:
        wanted = _absolute(str(folder))
        return next((s for s in self.sources.values() if s.kind is SourceKind.FOLDER and s.path == wanted), None)

    def name_for_folder(self, folder: Path, unique: bool = True) -> str:
        """The source name for ``folder``: its base name, made unique when asked (``docs``, ``docs-2``, …)."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(_absolute(str(folder))).name).strip("-.") or "docs"
        base = base[:56]
        if not unique:
            return base
        name, n = base, 1
        while name in self.sources:
            n += 1
            name = f"{base}-{n}"
        return name

    def put(self, source: DocumentSource) -> DocumentSource:
        if source.kind is SourceKind.FOLDER:
            source = source.model_copy(update={"path": _absolute(source.path)})
        self.sources[source.name] = source
        self.save()
        return source

    def remove(self, name: str) -> None:
        self.sources.pop(name, None)
        self.status.pop(name, None)
        self.save()

    def record_run(self, name: str, summary: str, skipped: list[dict[str, str]], rules_file: bool | None) -> None:
        self.status[name] = SourceStatus(time.time(), summary, skipped[:200], rules_file)
        self.save()

    def read_rules_file(self, name: str) -> bool | None:
        """Whether the last reindex of source ``name`` read its ACL rules file; ``None`` when no reindex recorded
        it (an index from before kb recorded it) — then the plan refuses only what would open documents."""
        status = self.status.get(name)
        return None if status is None else status.rules_file

    def note_rules_file(self, name: str, read: bool) -> None:
        """Record whether the rules file was read, for runs that keep no other status (a full rebuild, a rename)."""
        status = self.status.setdefault(name, SourceStatus())
        status.rules_file = read
        self.save()

    def save(self) -> None:
        self.save_to(self._state)

    def save_to(self, state: StateStore) -> None:
        """Write the registry into ``state`` (also a staging store, before a full rebuild is promoted)."""
        state.write_state(
            SOURCES_STATE,
            {
                "format": 1,
                "sources": [s.model_dump(mode="json") for s in self.sources.values()],
                "status": {name: status.as_dict() for name, status in self.status.items()},
            },
        )


def slugify(title: str, style: AnchorStyle) -> str:
    """The fragment the publishing tool gives a heading (``"Rotating an API key"`` → ``rotating-an-api-key``)."""
    return _SLUGS[style](title)


def _github_slug(title: str) -> str:
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def _mkdocs_slug(title: str) -> str:
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _sphinx_slug(title: str) -> str:
    text = unicodedata.normalize("NFKD", title.lower()).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-z0-9]+", "-", " ".join(text.split()))
    return re.sub(r"^[-0-9]+|-+$", "", text)


_SLUGS = {AnchorStyle.GITHUB: _github_slug, AnchorStyle.MKDOCS: _mkdocs_slug, AnchorStyle.SPHINX: _sphinx_slug}


def _stem(path: str) -> str:
    for suffix in (".rst.txt", ".markdown", ".md", ".rst", ".html", ".htm", ".adoc", ".asciidoc", ".txt"):
        if path.lower().endswith(suffix):
            return path[: -len(suffix)]
    return path.rsplit(".", 1)[0] if "." in Path(path).name else path


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
