"""Entry point of a parse worker process (``python -m kb.indexing.parse_worker``); see :mod:`kb.indexing.workers`."""

import os

from kb.indexing.workers import serve

if __name__ == "__main__":
    serve(int(os.environ.get("KB_PARSE_MEMORY_MB", "0")))
