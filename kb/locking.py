"""One writer per index: an advisory ``flock`` on ``<index>/LOCK``.

The kernel drops the lock when its holder exits or is killed, so a lock left by a dead process is simply
taken over; the file records the holder's pid and start time so a refused writer can say who holds it.

    >>> from kb.locking import IndexLock
    >>> lock = IndexLock("indexes/handbook").acquire()     # doctest: +SKIP
    >>> lock.release()                                      # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from kb.errors import ConfigError, IndexLockedError

LOCK_FILE = "LOCK"


class IndexLock:
    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> IndexLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"{self.path.parent}: cannot open the index ({exc.strerror or exc}); kb writes {LOCK_FILE} there even "
                "to read, since the embedded engine lets one process hold an index. Give it a writable folder (a "
                "copy of a read-only index works), or serve it from a Qdrant server"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise IndexLockedError(
                f"{self.path.parent} is open for writing by {holder}; one process may hold an index at a time. "
                "Stop that process, or hand the work to it (see 'Reindexing' in the README)."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["since"]))
        return f"pid {data['pid']} on {data['host']} (since {since})"
    except (ValueError, KeyError, OSError):
        return "another process"
