"""Parse and chunk files in worker processes, each file within ``max_file_seconds``.

    pool = parse_pool(2)
    for job, outcome in pool.run(jobs, seconds=60):      # outcome: ParsedFile, or SourceError with the reason
        ...

A parser stuck in native code (PDFium on a hostile file, lxml on a zip of XML) cannot be stopped from a
thread; a process can. Each worker handles one file at a time; one that runs past the limit, exceeds its
memory limit or dies is killed and replaced, and the file is reported as skipped with the reason. Workers
start from a fork server that has imported the parsers once, so a new worker costs a fork, not an import.
Results stream back in completion order while the caller embeds the previous batch (the pipeline).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from kb.acl import front_matter_acl
from kb.chunking import Chunk, ChunkingTimeout, HeadingChunker
from kb.errors import SourceError
from kb.loading import ParseOptions, SourceFormat, parse_file, read_file
from kb.tokens import TokenCounter


@dataclass(frozen=True)
class ChunkOptions:
    model_path: str
    max_tokens: int
    min_tokens: int


@dataclass(frozen=True)
class ParseJob:
    """One file to parse: where it is, the id it gets, and what parsing and chunking depend on."""

    doc_id: str
    path: str
    root: str
    parse: ParseOptions
    chunk: ChunkOptions
    seconds: float


@dataclass
class ParsedFile:
    """What a worker hands back: the document's identity, metadata and its chunks (never its raw bytes)."""

    doc_id: str
    content_hash: str
    mtime: float
    size: int
    source_format: SourceFormat
    title: str
    metadata: dict[str, Any]
    own_acl: list[str] | None
    chunks: list[Chunk] = field(default_factory=list)
    real: str = ""  # the path the worker read, links resolved: its ACL rules apply, not the plan's guess


class ParseFailure(SourceError):
    """The parser or chunker rejected these bytes (the same bytes fail again): ``content_hash`` names them."""

    failure = "parse"  # SkippedFile.failure (kb.indexing.failures)

    def __init__(self, reason: str, content_hash: str = "") -> None:
        super().__init__(reason)
        self.content_hash = content_hash


class LimitFailure(SourceError):
    """Parsing was stopped by a limit (time, memory) or a crash: may pass on another run or machine."""

    failure = "limit"
    content_hash = ""


def parse_job(job: ParseJob) -> ParsedFile:
    """Read, parse and chunk one file; raises :class:`SourceError` with the reason it cannot be indexed
    (:class:`ParseFailure` when the bytes were read and rejected, :class:`LimitFailure` when a limit hit)."""
    deadline = time.monotonic() + job.seconds
    raw = read_file(Path(job.path), job.parse, Path(job.root))  # a read error is neither: not remembered
    try:
        document = parse_file(raw, job.doc_id, job.parse)
    except SourceError as exc:
        raise ParseFailure(str(exc), raw.content_hash) from exc
    own_acl = front_matter_acl(document.parsed.metadata, job.doc_id)
    metadata = {k: v for k, v in document.parsed.metadata.items() if k != "acl"}
    counter = TokenCounter.for_model(Path(job.chunk.model_path))
    chunker = HeadingChunker(counter, max_tokens=job.chunk.max_tokens, min_tokens=job.chunk.min_tokens)
    try:
        chunks = chunker.chunk(document.parsed, deadline)
    except ChunkingTimeout as exc:
        raise LimitFailure(_timeout_reason(job.seconds)) from exc
    except RecursionError as exc:
        raise ParseFailure("structure nested too deeply to chunk", raw.content_hash) from exc
    return ParsedFile(
        job.doc_id,
        document.content_hash,
        document.mtime,
        document.size,
        document.source_format,
        document.title,
        metadata,
        own_acl,
        chunks,
        str(raw.real or ""),
    )


def _timeout_reason(seconds: float) -> str:
    return f"parsing and chunking took over max_file_seconds={seconds:g}; split the file or raise the setting"


def parse_guarded(job: ParseJob) -> ParsedFile | SourceError:
    """``parse_job`` with every failure turned into the SourceError that names why the file is skipped."""
    try:
        return parse_job(job)
    except SourceError as exc:
        return exc
    except MemoryError:
        return LimitFailure("needs more memory than parse_memory_mb allows to parse; split the file or raise it")
    except Exception as exc:  # a parser bug must cost one file, never the run
        return SourceError(f"could not be parsed ({type(exc).__name__}: {exc})")


def serve(memory_mb: int) -> None:
    """Worker process: read jobs from stdin, write outcomes to stdout, until stdin closes."""
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a parser that prints must not corrupt the protocol
    _send_frame(outbox, "ready")
    while True:
        job = _read_frame(inbox)
        if job is None:
            return
        result = parse_guarded(job)
        try:
            _send_frame(outbox, result)
        except Exception as exc:  # an unpicklable result
            _send_frame(outbox, SourceError(f"could not be parsed ({type(exc).__name__}: {exc})"))


def _send_frame(stream: Any, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("!Q", len(data)) + data)
    stream.flush()


def _read_frame(stream: Any) -> Any:
    head = _read_exactly(stream, 8)
    if head is None:
        return None
    body = _read_exactly(stream, struct.unpack("!Q", head)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(stream: Any, n: int) -> bytes | None:
    parts, missing = [], n
    while missing:
        piece = stream.read(missing)
        if not piece:
            return None
        parts.append(piece)
        missing -= len(piece)
    return b"".join(parts)


class _Worker:
    """One parse process, started with ``python -m kb.indexing.parse_worker`` (never a fork of the caller, and
    never a re-run of the caller's main module)."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "KB_PARSE_MEMORY_MB": str(memory_mb),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kb.indexing.parse_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches the caller, which stops its workers itself
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.ready = False
        self.job: ParseJob | None = None
        self.started = 0.0

    def fileno(self) -> int:
        return self.stdout.fileno()

    def send(self, job: ParseJob) -> None:
        self.job, self.started = job, time.monotonic()
        _send_frame(self.stdin, job)

    def receive(self) -> Any:
        return _read_frame(self.stdout)

    def kill(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class ParsePool:
    """A fixed number of parse worker processes, replaced when one is killed or dies."""

    def __init__(self, workers: int, memory_mb: int = 3072) -> None:
        self.size = max(1, workers)
        self.memory_mb = memory_mb
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()  # one run at a time per pool

    def run(self, jobs: Iterable[ParseJob], ahead: int = 32) -> Iterator[tuple[ParseJob, ParsedFile | SourceError]]:
        """Outcomes of ``jobs`` in completion order; parsing continues in the background while the caller
        works on what it got (at most ``ahead`` finished files wait for it)."""
        results: queue.Queue[Any] = queue.Queue(maxsize=ahead)
        stop = threading.Event()
        driver = threading.Thread(target=self._drive, args=(iter(jobs), results, stop), daemon=True, name="kb-pool")
        with self._lock:
            driver.start()
            try:
                while True:
                    item = results.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                stop.set()
                while driver.is_alive():  # unblock a driver waiting to hand over a result
                    with contextlib.suppress(queue.Empty):
                        results.get(timeout=0.05)
                driver.join()

    def _drive(self, jobs: Iterator[ParseJob], results: queue.Queue[Any], stop: threading.Event) -> None:
        workers: list[_Worker] = []  # this run's workers: starting, busy or idle
        pending: list[ParseJob] = []
        try:
            exhausted = False
            while not stop.is_set():
                while not exhausted and len(pending) < self.size:
                    job = next(jobs, None)
                    if job is None:
                        exhausted = True
                    else:
                        pending.append(job)
                while len(workers) < min(self.size, len(pending) + sum(w.job is not None for w in workers)):
                    workers.append(self._idle.pop() if self._idle else _Worker(self.memory_mb))
                for worker in workers:
                    if worker.ready and worker.job is None and pending:
                        worker.send(pending.pop(0))
                busy = [w for w in workers if w.job is not None]
                if not busy and not pending and exhausted:
                    break
                deadlines = [w.started + w.job.seconds for w in busy if w.job is not None]
                timeout = max(0.0, min(deadlines) - time.monotonic()) + 0.01 if deadlines else 5.0
                ready = wait(workers, timeout=timeout)
                for worker in list(workers):
                    job = worker.job
                    if worker in ready:
                        try:
                            outcome = worker.receive()
                        except (OSError, EOFError, pickle.UnpicklingError):
                            outcome = None
                        if outcome is None:  # the process died
                            workers.remove(worker)
                            if job is not None:
                                self._put(results, (job, LimitFailure(_died(worker))), stop)
                            worker.kill()
                        elif outcome == "ready":
                            worker.ready = True
                        else:
                            worker.job = None
                            self._put(results, (job, outcome), stop)
                    elif job is not None and time.monotonic() > worker.started + job.seconds:
                        workers.remove(worker)
                        worker.kill()
                        self._put(results, (job, LimitFailure(_timeout_reason(job.seconds))), stop)
        except BaseException as exc:
            self._put(results, exc, stop)
        finally:
            for worker in workers:
                if worker.job is None and worker.ready:
                    self._idle.append(worker)
                else:  # abandoned mid-file (the caller stopped): never reuse it
                    worker.kill()
            self._put(results, None, stop)

    @staticmethod
    def _put(results: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
        while True:
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                if stop.is_set():
                    return

    def close(self) -> None:
        for worker in self._idle:
            worker.kill()
        self._idle.clear()


def _died(worker: _Worker) -> str:
    try:
        code = worker.process.wait(1)
    except subprocess.TimeoutExpired:
        code = None
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGABRT and worker.memory_mb:
        # Native parsers (PDFium) abort when an allocation fails, and under the worker's address-space limit
        # that is how running out of memory looks: say which limit, not just the signal.
        return (
            f"the parser crashed on this file ({how}: out of memory under parse_memory_mb={worker.memory_mb}, "
            "or a malformed file); it was skipped — split the file or raise parse_memory_mb"
        )
    return f"the parser crashed on this file ({how}); it was skipped"


_POOLS: dict[tuple[int, int], ParsePool] = {}
_POOLS_LOCK = threading.Lock()


def parse_pool(workers: int, memory_mb: int = 3072) -> ParsePool:
    """The process-wide pool of ``workers`` parse processes (started on first use, reused by every index)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((workers, memory_mb))
        if pool is None:
            pool = _POOLS[(workers, memory_mb)] = ParsePool(workers, memory_mb)
        return pool


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()


def cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
