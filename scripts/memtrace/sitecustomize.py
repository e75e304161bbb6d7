"""Heap snapshots on demand, for a leak hunt in a process we do not control the code of (``kb serve``).

Put this folder first on ``PYTHONPATH`` and set ``KB_MEMTRACE_DIR``: the process traces its allocations
(tracemalloc, 8 frames) and writes ``snapshot-N.pickle`` to that folder on each ``SIGUSR1``.
``scripts/soak_http.py --trace`` does both and prints what grew between warm-up and the end.
"""

import os

if os.environ.get("KB_MEMTRACE_DIR"):
    import itertools
    import signal
    import tracemalloc
    from pathlib import Path

    _folder = Path(os.environ["KB_MEMTRACE_DIR"])
    _counter = itertools.count()
    tracemalloc.start(8)

    def _dump(_signum: int, _frame: object) -> None:
        path = _folder / f"snapshot-{next(_counter)}.pickle"
        tracemalloc.take_snapshot().dump(str(path) + ".part")
        os.replace(str(path) + ".part", path)  # whole files only: the reader polls for it

    signal.signal(signal.SIGUSR1, _dump)
