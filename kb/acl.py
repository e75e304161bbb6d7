"""Document access control: who may read which document, decided at ingest, enforced inside Qdrant.

Each chunk's payload carries ``acl``: the groups allowed to read its document (``"__public__"`` for
everyone). A caller is a :class:`Principal`; its groups become a payload condition in *both* prefetch legs
(and the BM25 IDF corpus), so forbidden chunks never reach fusion, the limit, the reranker or the LLM.

The admin's policy is a ceiling, and a document can only narrow it, never widen it:

1. the source's ``acl`` (``kb source add NAME DIR --acl hr``, ``[[sources]] acl``, or the ingest call's
   ``acl=``, which is stored with the source and kept by every later reindex);
2. the rules file of the source (``kb-acl.toml`` at its root): the *last* rule whose pattern matches the
   document's path relative to the root gives its groups (``fnmatch`` globs; ``*`` crosses folders)::

       [[rule]]
       pattern = "*"
       groups = ["staff"]

       [[rule]]
       pattern = "hr/*"
       groups = ["hr"]

   When both exist, a document may be read by the groups both allow (their intersection);
3. when neither says anything, ``acl_default``: ``public``, or ``deny`` (only ``*`` principals read it);
4. the document's own ``acl`` (front matter, ``<meta name="kb:acl">``) is intersected with that policy:
   ``acl: [eng]`` in a public folder narrows it to ``eng``; ``acl: public`` in an ``hr`` folder stays
   ``hr``. A document whose own groups share none with the policy is readable by ``*`` principals only.

    >>> Principal(groups=["eng"]).readable()
    ['__public__', 'eng']
    >>> Principal.trusted().readable() is None
    True
    >>> AclPolicy(ceiling=["hr"]).resolve("payroll.html", own=["__public__"])
    ['hr']
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kb.errors import ConfigError, SourceError

PUBLIC = "__public__"
ALL = "*"
ACL_FILE = "kb-acl.toml"


class AclDefault(StrEnum):
    """What documents without any ACL get: readable by everyone, or by nobody but ``*`` principals."""

    PUBLIC = "public"
    DENY = "deny"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the reader groups of a user, an API key or a service. ``*`` reads everything."""

    groups: Sequence[str] = ()
    name: str = ""

    @classmethod
    def trusted(cls) -> Principal:
        """An in-process caller that reads everything (the default when no ``user`` is given)."""
        return cls(groups=(ALL,), name="trusted")

    def readable(self) -> list[str] | None:
        """ACL values this principal may read, or ``None`` for everything."""
        if ALL in self.groups:
            return None
        return sorted({PUBLIC, *self.groups})


@dataclass
class AclRule:
    pattern: str
    groups: list[str]


@dataclass
class AclPolicy:
    """Decides each document's groups: the admin's ceiling (source ACL, rules, default), narrowed by its own."""

    default: AclDefault = AclDefault.PUBLIC
    rules: list[AclRule] = field(default_factory=list)
    ceiling: list[str] | None = None  # the source's acl
    rules_file_read: bool = False  # whether the rules came from a file with content (a comment alone counts)

    @property
    def rules_to_keep(self) -> bool:
        """Whether a rules file with rules was read: the next reindex must find it (a comment-only file may go)."""
        return self.rules_file_read and bool(self.rules)

    @classmethod
    def for_rules_file(cls, rules_file: Path, default: AclDefault, ceiling: Sequence[str] | None) -> AclPolicy:
        groups = normalize_groups(list(ceiling), "source acl") if ceiling is not None else None
        return cls(default, load_rules(rules_file), groups, rules_file_read=_holds_something(rules_file))

    def policy(self, path: str) -> list[str]:
        """The admin's groups for the document at ``path`` (relative to the source root)."""
        layers: list[list[str]] = []
        if self.ceiling is not None:
            layers.append(self.ceiling)
        rule = next((r for r in reversed(self.rules) if fnmatch.fnmatchcase(path, r.pattern)), None)
        if rule is not None:
            layers.append(rule.groups)
        if not layers:
            layers.append([PUBLIC] if self.default is AclDefault.PUBLIC else [])
        groups = sorted(layers[0])
        for layer in layers[1:]:
            groups = intersect(groups, layer)
        return groups

    def resolve(self, path: str, own: list[str] | None, also: Sequence[str] = ()) -> list[str]:
        """``own`` is the document's own ACL (already normalised), ``None`` when it has none. ``also``: the other
        paths that lead to the same file (its real path, when listed through a link): the narrowest policy of
        them all applies, so a link never opens a file its real place keeps to a group."""
        policy = self.policy(path)
        for other in also:
            if other != path:
                policy = intersect(policy, self.policy(other))
        return policy if own is None else intersect(policy, own)


def intersect(a: list[str], b: list[str]) -> list[str]:
    """Groups allowed by both ``a`` and ``b`` (``__public__`` allows everyone)."""
    if PUBLIC in a:
        return sorted(b)
    if PUBLIC in b:
        return sorted(a)
    return sorted(set(a) & set(b))


def narrowest(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    """Groups allowed by both ACLs, where ``None`` (a chunk from before access control) is trusted callers only."""
    return None if a is None or b is None else intersect(a, b)


def front_matter_acl(metadata: dict[str, Any], doc_id: str) -> list[str] | None:
    """The ``acl`` front-matter field of a document, normalised; a malformed one is a SourceError."""
    if "acl" not in metadata:
        return None
    try:
        return normalize_groups(metadata["acl"], "front matter 'acl'")
    except ConfigError as exc:
        raise SourceError(f"{doc_id}: {exc}; the document was not indexed (fix its acl)") from exc


def normalize_groups(value: Any, where: str) -> list[str]:
    """``"eng, sre"``, ``["eng", "sre"]`` or ``"public"`` → sorted group names (``public`` → ``__public__``)."""
    items = [part.strip() for part in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(g, str) and g.strip() for g in items):
        raise ConfigError(f"{where}: expected a list of group names (or 'public'), got {value!r}")
    groups = {PUBLIC if g.strip().lower() in ("public", PUBLIC) else g.strip() for g in items}
    if ALL in groups:
        raise ConfigError(f"{where}: '*' is for principals (read everything), not for documents; use 'public'")
    return [PUBLIC] if PUBLIC in groups else sorted(groups)


def _holds_something(path: Path) -> bool:
    """Whether the rules file is there with any content: 0 bytes is what an interrupted sync leaves, so only a
    file that says something (a comment is enough) drops the rules on purpose."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def widens(old: list[str], new: list[str]) -> bool:
    """Whether ACL ``new`` lets in someone ``old`` did not."""
    return intersect(old, new) != sorted(new)


def load_rules(path: Path) -> list[AclRule]:
    """The rules of an ACL file such as ``root/kb-acl.toml`` (none when absent); a malformed file, or one that is
    there but cannot be read (a link to nothing, a folder, no permission), is a ConfigError: read as "no rules",
    it would open every document the rules keep to a group."""
    if not os.path.lexists(path):
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{path}: the ACL rules file cannot be read ({why}); nothing was indexed. Fix it (to drop its rules, "
            "replace it with a file holding only a comment)."
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); nothing was indexed. Fix the file.") from exc
    rules = data.get("rule", [])
    if not isinstance(rules, list) or set(data) - {"rule"}:
        raise ConfigError(f"{path}: expected only [[rule]] tables with 'pattern' and 'groups'")
    out = []
    for n, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict) or not isinstance(rule.get("pattern"), str) or set(rule) != {"pattern", "groups"}:
            raise ConfigError(f"{path}: rule {n} needs exactly 'pattern' (a glob) and 'groups' (a list)")
        out.append(AclRule(rule["pattern"], normalize_groups(rule["groups"], f"{path}: rule {n} groups")))
    return out
