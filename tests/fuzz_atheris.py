"""atheris (libFuzzer) harness for the loaders and the chunker; run by tests/test_hostile.py as a subprocess:

    python tests/fuzz_atheris.py -runs=3000

Any exception other than kb's documented SourceError, or a chunk outside its document, is a crash."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["kb"]):
    from kb.chunking import HeadingChunker
    from tests.invariants import check_file

CHUNKER = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=64, min_tokens=8)
NAMES = ["doc.md", "doc.rst", "doc.html", "doc.txt"]


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    name = NAMES[provider.ConsumeIntInRange(0, len(NAMES) - 1)]
    check_file(name, provider.ConsumeBytes(provider.remaining_bytes()), CHUNKER)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
