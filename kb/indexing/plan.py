"""Planning a reindex of one source: what to add, change, rewrite, rename, delete — before anything is written.

    plan = plan_source(source, manifest, settings, sync=True)
    plan.summary()        # "3 added, 2 changed, 1 deleted, 412 unchanged"

Only the planned source's documents are compared, so a plan never deletes another source's documents.
A file is unchanged when its size and mtime equal the manifest's (the fast path, no read) or, when they
differ, when its content hash does; with ``verify`` every file is hashed. Files that cannot be read, and
every document under a folder that cannot be listed, are skips that keep their indexed version. Deleting
more than ``max_delete_fraction`` of a source is refused unless asked for (an empty checkout is not an
instruction to empty the index). Documents of an index built before sources existed (bare ids) that are
in the folder are adopted: renamed to ``source:path`` with their vectors reused, nothing re-embedded.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kb.acl import AclPolicy, intersect, widens
from kb.errors import SourceError
from kb.loading import Selection, SkippedFile, discover, hash_file, inspect_file
from kb.manifest import DocumentEntry, Manifest
from kb.settings import Settings
from kb.sources import DocumentSource

if TYPE_CHECKING:
    from kb.indexing.failures import ParseFailures


@dataclass
class PlannedFile:
    """A file to (re)index: where it is and what the plan saw (the worker re-reads and re-hashes it)."""

    doc_id: str
    path: Path
    relative: str
    content_hash: str
    replaces: str | None = None  # the manifest id this version replaces (itself, or a legacy id it adopts)
    real: str = ""  # its real path under the root, when listed through a link: its ACL rules apply too


@dataclass
class IndexPlan:
    """What a reindex of ``source`` would do."""

    source: DocumentSource
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)  # same content, payload written with other settings
    adopted: dict[str, str] = field(default_factory=dict)  # new id → legacy id (index built before sources)
    unchanged: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # files no include pattern picks, by extension
    real_changed: dict[str, str] = field(default_factory=dict)  # unchanged documents: their real path, newly seen
    acl_changed: dict[str, list[str]] = field(default_factory=dict)  # unchanged content, new groups
    files: dict[str, PlannedFile] = field(default_factory=dict, repr=False)
    policy: AclPolicy = field(default_factory=AclPolicy, repr=False)
    refused_deletes: str = ""  # why the planned deletions will not be applied (mass-delete guard)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged"
            + (f", {len(self.acl_changed)} ACL changed" if self.acl_changed else "")
            + (f", {len(self.refreshed)} rewritten" if self.refreshed else "")
            + (f", {len(self.adopted)} adopted" if self.adopted else "")
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
        )

    @property
    def writes(self) -> list[str]:
        """Documents whose points are written: added, changed, rewritten and adopted, in that order."""
        return self.added + self.changed + self.refreshed + list(self.adopted)


def plan_source(
    source: DocumentSource,
    manifest: Manifest,
    settings: Settings,
    sync: bool,
    verify: bool = False,
    allow_mass_delete: bool = False,
    adopt_from: str = "",
    failures: ParseFailures | None = None,
    rules_file_before: bool | None = False,
) -> IndexPlan:
    """Compare ``source``'s folder with its manifest entries; nothing is written.

    A file that ``failures`` remembers failing to parse in this very version is planned as a skip with the
    same reason instead of being parsed again (not with ``verify``).

    Documents of source ``adopt_from`` (default ``""``: those indexed before sources existed) whose path is
    in the folder are adopted: renamed into this source, their vectors reused.

    ACLs never widen by accident: a document listed through a link takes the narrowest policy of its listed and
    real paths; one whose indexed version stays (this version unread, unparsable or under an unreadable folder)
    takes a policy that narrowed since, never a wider one; and with ``rules_file_before`` (the last reindex read
    the source's rules file; ``None``: not recorded) a rules file that is gone or emptied stops the plan instead
    of opening what it kept closed (when not recorded: if it would open any document)."""
    root = source.folder
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder (source {source.name!r}); pass the folder that holds the documents")
    started = time.perf_counter()
    selection = Selection.from_settings(settings, source.include, source.exclude, source.asciidoc_patterns or None)
    plan = IndexPlan(source, policy=AclPolicy.for_rules_file(source.acl_rules_path, settings.acl_default, source.acl))
    rules_path = source.acl_rules_path
    if rules_file_before and not plan.policy.rules_file_read:
        state = "is empty (0 bytes)" if os.path.lexists(rules_path) else "is gone"
        raise SourceError(
            f"{rules_path}: the ACL rules file the last reindex of source {source.name!r} read {state}; nothing was "
            f"changed (without it, documents its rules keep to a group would open). {_DROP_RULES}"
        )
    real_root = f"{root.resolve()}{os.sep}"  # a string prefix: the real path of every file is taken against it
    documents = manifest.snapshot()
    mine = {d: e for d, e in documents.items() if e.source == source.name}
    legacy = {(e.path or d): d for d, e in documents.items() if e.source == adopt_from and adopt_from != source.name}
    fingerprint = source.fingerprint()
    present: set[str] = set()
    kept_prefixes: list[str] = []
    emptied: list[str] = []

    def narrow_kept(doc_id: str, entry: DocumentEntry, paths: tuple[str, ...]) -> None:
        """Its indexed version stays: a policy that narrowed since applies to it; a wider one only to content
        read again (a copy checked out without its rules must not open what they kept to a group)."""
        if entry.acl is None or doc_id in plan.acl_changed:
            return
        also = (*paths[1:], entry.real) if entry.real else paths[1:]  # where it was read last time, through a link
        narrowed = intersect(entry.acl, plan.policy.resolve(paths[0], entry.own_acl, also=also))
        if narrowed != sorted(entry.acl):
            plan.acl_changed[doc_id] = narrowed

    for found in discover(root, selection, plan.ignored):
        if found.path is None:  # a folder that cannot be listed: keep what is indexed under it
            plan.skipped.append(SkippedFile(source.doc_id(found.relative), found.error))
            kept_prefixes.append(source.doc_id(found.relative))
            continue
        doc_id = source.doc_id(found.relative)
        try:
            info = inspect_file(found.path, selection.options, root, found)
        except SourceError as exc:
            plan.skipped.append(SkippedFile(doc_id, str(exc)))
            if doc_id in mine:
                narrow_kept(doc_id, mine[doc_id], (found.relative, under_root(_real(found.path), real_root)))
            continue
        real = under_root(info.path, real_root) or found.relative
        paths = (found.relative, real)
        present.add(doc_id)
        known = mine.get(doc_id)
        old_id = doc_id
        if known is None and found.relative in legacy:
            old_id = legacy[found.relative]
            known = documents[old_id]
        same_stat = known is not None and known.size == info.size and known.mtime == info.mtime
        if same_stat and not verify and old_id == doc_id:
            content_hash = known.doc_hash  # fast path: the file was not touched since it was indexed
        else:
            try:
                if found.listed is not None:
                    # About to read it: the full check, not the listing's stat — its folder may have been swapped
                    # for a link out of the tree since the walk resolved it.
                    info = inspect_file(found.path, selection.options, root)
                content_hash = hash_file(info)
            except SourceError as exc:
                plan.skipped.append(SkippedFile(doc_id, str(exc)))
                if known is not None and old_id == doc_id:
                    narrow_kept(doc_id, known, paths)
                continue
        indexed_as_is = known is not None and known.doc_hash == content_hash
        if failures is not None and not verify and not indexed_as_is:
            remembered = failures.known(source, doc_id, content_hash)
            if remembered is not None:  # the same bytes failed last time: the indexed version (if any) stays
                plan.skipped.append(remembered)
                if known is not None and old_id == doc_id:
                    narrow_kept(doc_id, known, paths)
                continue
        planned = PlannedFile(doc_id, found.path, found.relative, content_hash, old_id if known else None, real)
        if known is None:
            plan.added.append(doc_id)
        elif old_id != doc_id:
            plan.adopted[doc_id] = old_id
        elif known.doc_hash != content_hash:
            plan.changed.append(doc_id)
            if info.size == 0 and known.size > 0:
                emptied.append(doc_id)  # as good as deleted: the mass-delete guard counts it
            narrow_kept(doc_id, known, paths)  # first: should the new version fail (or the run stop), the old stays
        elif known.fingerprint != fingerprint:
            plan.refreshed.append(doc_id)
            narrow_kept(doc_id, known, paths)
        else:
            plan.unchanged += 1
            groups = plan.policy.resolve(found.relative, known.own_acl, also=(real,))
            if groups != known.acl:
                plan.acl_changed[doc_id] = groups
            if real != found.relative and real != known.real:
                plan.real_changed[doc_id] = real  # recorded for manifests written before it was kept
            continue
        plan.files[doc_id] = planned
    for doc_id, entry in mine.items():  # under a folder that cannot be listed: kept as indexed
        if doc_id not in present and any(doc_id.startswith(prefix) for prefix in kept_prefixes):
            narrow_kept(doc_id, entry, (entry.path or doc_id.removeprefix(f"{source.name}:"),))
    if rules_file_before is None and not plan.policy.rules_file_read:
        after = dict(plan.acl_changed)
        for doc_id in (*plan.changed, *plan.refreshed):  # re-read: the new policy applies to them in full
            entry, planned = mine[doc_id], plan.files[doc_id]
            also = tuple(path for path in (planned.real, entry.real) if path)
            after[doc_id] = plan.policy.resolve(planned.relative, entry.own_acl, also=also)
        before = {d: mine[d].acl for d in after if d in mine}
        opened = [d for d, acl in before.items() if acl is not None and widens(acl, after[d])]
        if opened:
            raise SourceError(
                f"{rules_path}: there is no ACL rules file, and this index does not record whether the last reindex "
                f"of source {source.name!r} read one; without it {len(opened)} documents would open (e.g. "
                f"{', '.join(opened[:3])}). Nothing was changed. {_DROP_RULES}"
            )
    if sync:
        kept = present | {s.doc_id for s in plan.skipped}
        plan.deleted = sorted(
            d for d in mine if d not in kept and not any(d.startswith(prefix) for prefix in kept_prefixes)
        )
    if sync or emptied:  # an ingest deletes nothing, but emptied files would empty their documents all the same
        deleting = len(plan.deleted) + len(emptied)
        plan.refused_deletes = mass_delete_refusal(source, deleting, len(mine), settings, allow_mass_delete)
        if plan.refused_deletes and emptied:  # an interrupted sync that truncated the files: keep what is indexed
            plan.refused_deletes += f" ({len(emptied)} of them are files emptied to 0 bytes: kept as indexed)"
            for doc_id in emptied:
                plan.changed.remove(doc_id)
                del plan.files[doc_id]
                plan.skipped.append(SkippedFile(doc_id, "emptied to 0 bytes; kept as indexed (mass-delete guard)"))
    plan.seconds = time.perf_counter() - started
    return plan


_DROP_RULES = (
    "Restore it; or, if the rules are meant to go (or the source never had a rules file), put a kb-acl.toml with "
    "only a comment (# no rules) there for one reindex: a file without rules may be removed afterwards"
)


def mass_delete_refusal(source: DocumentSource, deleting: int, indexed: int, settings: Settings, allowed: bool) -> str:
    """Why deleting ``deleting`` of ``indexed`` documents is refused, or ``""`` when it may go ahead."""
    limit = settings.max_delete_fraction
    if allowed or deleting <= 1 or deleting <= limit * indexed:
        return ""
    return (
        f"would delete {deleting} of the {indexed} documents of source {source.name!r} "
        f"({deleting / indexed:.0%}), more than max_delete_fraction={limit:g}; is {source.path} the right, "
        "complete folder (a failed checkout, an unmounted share)? Nothing was deleted. If the deletions are "
        "meant, run again with --allow-mass-delete (Python: allow_mass_delete=True)."
    )


def entry_for(source: DocumentSource, relative: str, previous: DocumentEntry | None, **values: object) -> DocumentEntry:
    """A manifest entry for a document of ``source`` (``values``: the DocumentEntry fields that changed)."""
    base = previous.as_dict() if previous is not None else {}
    return DocumentEntry(
        **{**base, **values, "source": source.name, "path": relative, "fingerprint": source.fingerprint()}
    )


def under_root(path: Path, root: str) -> str:
    """``path`` relative to the folder ``root`` (its resolved path and a separator), or "" when it is not under it:
    string slicing, because every file of every reindex goes through here (Path.relative_to cost 0.09 s at 13k)."""
    text = str(path)
    return text[len(root) :].replace(os.sep, "/") if text.startswith(root) else ""


def _real(path: Path) -> Path:
    """``path`` with every link resolved, as far as it exists (a dangling link: where it points)."""
    return Path(os.path.realpath(path))
