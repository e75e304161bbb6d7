"""Invariants shared by the fuzz tests (hypothesis in test_hostile.py, atheris in fuzz_atheris.py)."""

from __future__ import annotations

from kb.chunking import HeadingChunker
from kb.errors import SourceError
from kb.loading import RawFile, parse_file


def check_file(name: str, body: bytes, chunker: HeadingChunker) -> None:
    """Load ``body`` as file ``name`` and chunk it: only SourceError may escape, and every chunk must be an
    exact, in-order slice of the document text."""
    from pathlib import Path

    try:
        document = parse_file(RawFile(Path(name), body, "h", 0.0, len(body)), name)
    except SourceError:
        return
    text = document.parsed.text
    previous = 0
    for chunk in chunker.chunk(document.parsed):
        assert 0 <= chunk.span.start < chunk.span.end <= len(text), (chunk.span, len(text))
        assert chunk.span.start >= previous and chunk.text == text[chunk.span.start : chunk.span.end]
        previous = chunk.span.end
