"""YAML front matter (``---`` fenced, at the top of Markdown, reST or text files)."""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from kb.document import check_metadata_size
from kb.errors import SourceError

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?\r?\n)?---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def split_front_matter(text: str) -> tuple[dict[str, Any], int]:
    """Front matter as a dict and the offset where the body starts (0 when there is none)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, 0
    try:
        values = yaml.safe_load(match.group(1) or "") or {}
    except yaml.YAMLError as exc:
        raise SourceError(f"front matter is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(values, dict):
        raise SourceError("front matter must be a YAML mapping (key: value lines)")
    return storable_metadata(values), match.end()


def storable_metadata(values: dict[Any, Any]) -> dict[str, Any]:
    """``values`` as the store can hold them (see :func:`_plain`), for metadata that does not come from YAML (a
    source's ``metadata``: TOML has ``inf`` and ``nan`` too); raises SourceError naming the field."""
    plain = {_storable_key(k): _plain(v, _storable_key(k)) for k, v in values.items()}
    check_metadata_size(plain, "front matter / metadata")
    return plain


def blank_out(text: str, end: int) -> str:
    """``text`` with its first ``end`` characters replaced by spaces, newlines kept (offsets unchanged)."""
    return "".join("\n" if ch == "\n" else " " for ch in text[:end]) + text[end:]


_INT64 = 2**63


def _plain(value: Any, field: str) -> Any:
    """A front-matter value as the store can hold it (JSON: dates and other YAML scalars become strings), or a
    SourceError naming the field: ``.inf``, ``.nan``, a lone surrogate or a 65-bit integer made the store refuse
    the whole batch, and every later reindex of every source stopped at it."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise SourceError(f"front matter {field!r}: {value} is not a finite number; give a number or a quoted text")
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise SourceError(f"front matter {field!r}: {value} is beyond a 64-bit integer; quote it to keep it as text")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return _valid_text(value, field)
    if isinstance(value, list):
        return [_plain(v, field) for v in value]
    if isinstance(value, dict):
        return {_storable_key(k, field): _plain(v, f"{field}.{k}") for k, v in value.items()}
    return _valid_text(str(value), field)


def _storable_key(key: Any, within: str = "") -> str:
    return _valid_text(str(key), f"{within}.{key}" if within else str(key), what="name")


def _valid_text(text: str, field: str, what: str = "value") -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError(
            f"front matter {field.encode('utf-8', 'backslashreplace').decode()!r}: the {what} is not valid Unicode "
            "(a lone surrogate such as \\uD800); fix it"
        ) from None
    return text
