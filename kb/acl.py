"""Document access control: who may read which document, decided at ingest, enforced inside Qdrant.

Each chunk's payload carries ``acl``: the groups allowed to read its document (``"__public__"`` for
everyone). A caller is a :class:`Principal`; its groups become a payload condition in *both* prefetch legs
(and the BM25 IDF corpus), so forbidden chunks never reach fusion, the limit, the reranker or the LLM.

Where a document's groups come from, first match wins:

1. the ingest call: ``kb.ingest("docs/hr", acl=["hr"])``;
2. its front matter: ``acl: [eng, sre]`` (``acl: public`` for everyone);
3. the ACL file ``kb-acl.toml`` at the root of the ingested folder; the *last* rule whose pattern matches
   the document's path wins (patterns are ``fnmatch`` globs on the path relative to the root; ``*``
   crosses folders)::

       [[rule]]
       pattern = "*"
       groups = ["staff"]

       [[rule]]
       pattern = "hr/*"
       groups = ["hr"]

4. the default policy, ``acl_default`` in the settings: ``public`` or ``deny`` (readable only by
   principals with the ``*`` group).

    >>> Principal(groups=["eng"]).readable()
    ['__public__', 'eng']
    >>> Principal.trusted().readable() is None
    True
"""

from __future__ import annotations

import fnmatch
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
class AclResolver:
    """Decides each document's groups from the ingest call, its front matter, the ACL file and the default."""

    default: AclDefault = AclDefault.PUBLIC
    rules: list[AclRule] = field(default_factory=list)
    call: list[str] | None = None

    @classmethod
    def for_folder(cls, root: Path, default: AclDefault, call: Sequence[str] | None = None) -> AclResolver:
        return cls(default, load_rules(root), normalize_groups(call, "acl argument") if call is not None else None)

    def resolve(self, doc_id: str, own: list[str] | None) -> list[str]:
        """``own`` is the document's front-matter ACL (already normalised), ``None`` when it has none."""
        if self.call is not None:
            return self.call
        if own is not None:
            return own
        for rule in reversed(self.rules):
            if fnmatch.fnmatchcase(doc_id, rule.pattern):
                return rule.groups
        return [PUBLIC] if self.default is AclDefault.PUBLIC else []


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
    groups = {PUBLIC if g.strip().lower() == "public" else g.strip() for g in items}
    if ALL in groups:
        raise ConfigError(f"{where}: '*' is for principals (read everything), not for documents; use 'public'")
    return sorted(groups)


def load_rules(root: Path) -> list[AclRule]:
    """The rules of ``root/kb-acl.toml`` (none when the file is absent); a malformed file is a ConfigError."""
    path = root / ACL_FILE
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
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
