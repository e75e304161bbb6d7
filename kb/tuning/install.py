"""``kb tune``, stage 5: make a tuned model the index's reranker, or take it back.

Installing writes ``reranker_model = "tune/reranker-…"`` into the index's ``kb.toml`` (a path relative to the
index folder, which :class:`kb.settings.Settings` resolves there), so every later ``KnowledgeBase.open`` of the
index reranks with it and ``kb status`` names it; the rest of the file is kept byte for byte. The line it
replaced is remembered in ``tune/installed.json``, and :func:`uninstall` puts it back (a gate that fails
on a later run takes its own install back; a value the user wrote since is left alone).
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from pathlib import Path

from kb.errors import ConfigError
from kb.settings import SETTINGS_FILE
from kb.tuning.files import read_json, write_json

INSTALLED_FILE = "installed.json"
KEY = "reranker_model"
_HEADER = re.compile(r"^\s*\[")


def set_top_level(text: str, key: str, value: str | None) -> tuple[str, str | None]:
    """``text`` (TOML) with top-level ``key`` set to the string ``value`` (removed for ``None``), and the line
    it replaced (``None`` if there was none). Top-level keys live before the first table header."""
    return put_line(text, key, f"{key} = {json.dumps(value)}" if value is not None else None)


def put_line(text: str, key: str, line: str | None) -> tuple[str, str | None]:
    """``text`` with the top-level line of ``key`` replaced by ``line`` in place (added before the first table
    when there is none; removed for ``None``), and the line it replaced."""
    lines = text.splitlines(keepends=True)
    first_table = next((i for i, old in enumerate(lines) if _HEADER.match(old)), len(lines))
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    at = next((i for i in range(first_table) if pattern.match(lines[i])), None)
    previous = lines[at].rstrip("\r\n") if at is not None else None
    new = [line + "\n"] if line is not None else []
    if at is not None:
        lines[at : at + 1] = new
    else:
        if first_table and not lines[first_table - 1].endswith("\n"):
            lines[first_table - 1] += "\n"
        lines[first_table:first_table] = new
    return "".join(lines), previous


def _write_toml(index: Path, text: str) -> None:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # never leave the index with settings it cannot read
        raise ConfigError(f"{index / SETTINGS_FILE}: could not set {KEY} ({exc}); set it by hand") from exc
    tmp = index / f".{SETTINGS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, index / SETTINGS_FILE)


def configured_model(index: Path) -> str:
    """What ``kb.toml`` names as ``reranker_model`` (as written), or ""."""
    path = index / SETTINGS_FILE
    if not path.is_file():
        return ""
    try:
        return str(tomllib.loads(path.read_text(encoding="utf-8")).get(KEY, ""))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return ""


def install(index: Path, model: Path, tune: Path) -> str:
    """Name ``model`` (a folder under ``index``) in ``index/kb.toml``; returns the value written."""
    value = os.path.relpath(model.resolve(), index.resolve())
    if value.startswith(".."):
        value = str(model.resolve())  # the work folder is elsewhere (a script's variant): name it absolutely
    path = index / SETTINGS_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    record = read_json(tune / INSTALLED_FILE) or {}
    updated, previous = set_top_level(text, KEY, value)
    if record.get("model") and configured_model(index) == record["model"]:
        previous = record.get("previous")  # re-installing over our own install: keep the user's original line
    _write_toml(index, updated)
    write_json(tune / INSTALLED_FILE, {"model": value, "previous": previous, "installed_at": time.time()})
    return value


def uninstall(index: Path, tune: Path) -> bool:
    """Undo :func:`install` if ``kb.toml`` still names what it installed; whether anything changed."""
    record = read_json(tune / INSTALLED_FILE)
    if not record or configured_model(index) != record.get("model"):
        return False
    path = index / SETTINGS_FILE
    text, _ = put_line(path.read_text(encoding="utf-8"), KEY, record.get("previous"))  # the user's line, in place
    _write_toml(index, text)
    (tune / INSTALLED_FILE).unlink(missing_ok=True)
    return True
