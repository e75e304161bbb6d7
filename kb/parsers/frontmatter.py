"""YAML front matter (``---`` fenced, at the top of Markdown, reST or text files)."""

from __future__ import annotations

import re
from typing import Any

import yaml

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
    return {str(k): _plain(v) for k, v in values.items()}, match.end()


def blank_out(text: str, end: int) -> str:
    """``text`` with its first ``end`` characters replaced by spaces, newlines kept (offsets unchanged)."""
    return "".join("\n" if ch == "\n" else " " for ch in text[:end]) + text[end:]


def _plain(value: Any) -> Any:
    # Payloads must be JSON: dates and other YAML scalars become strings.
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
