"""The sample knowledge base shipped with kb: 26 documents of Lumen Pay, a fictional payments company."""

from __future__ import annotations

from pathlib import Path

SAMPLE_KB = Path(__file__).parent / "sample_kb"


def sample_kb_path() -> Path:
    """Folder of the bundled sample documents (Markdown, reST, HTML and plain text)."""
    return SAMPLE_KB
