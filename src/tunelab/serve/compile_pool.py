"""Compile constraint patterns in separate processes, each under a wall-time and a memory limit.

outlines-core determinises a regex and walks every vocabulary token through it, in native code that cannot be
interrupted from Python: `[ab]*a[ab]{N}` needs 2^N states (0.5 s at N=8 on a 49k vocabulary, weeks at N=30).
Run in the server's own process, one such request would hold a CPU and memory until the process dies. Here each
compile runs in one of a few worker processes (fresh interpreters on a socket pair); a worker that overruns its
time is killed and replaced, and one that exceeds its address-space limit (`RLIMIT_AS`) fails its allocation and
ends. The compiled `Index` pickles (outlines-core serialises its tables), so it comes back to the server whole.

This module imports only the standard library and outlines-core: the workers import it too.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

from outlines_core import Index, Vocabulary
from outlines_core import json_schema as outlines_schema

from tunelab.serve.pattern_limits import PatternLimitError, PatternLimits, check_repeats

try:
    import resource  # POSIX; elsewhere only the time limit applies
except ImportError:
    resource = None

Kind = Literal["regex", "schema"]
Reason = Literal["invalid", "limit", "timeout", "memory", "crash", "abandoned"]
_STARTUP_SECONDS = 120.0  # a fresh interpreter importing outlines-core and reading the vocabulary
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `tunelab` package, for the workers
WHAT = {"regex": "regex", "schema": "regular expression built from the response_format JSON schema"}


class CompileFailure(Exception):
    """A pattern that did not compile: `reason` says why, `detail` is the compiler's own message (if any)."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


@dataclass
class CompileJob:
    """One pattern to compile. `future` gets `(index, size of its tables in bytes)` or a `CompileFailure`."""

    kind: Kind
    text: str
    timeout: float
    max_repeat: int
    future: Future = field(default_factory=Future)
    wanted: Callable[[], bool] = lambda: True
    """False once every request waiting for this job has given up: a queued job is then skipped."""


class CompilePool:
    """`workers` processes fed from one queue; `submit` never blocks, results arrive on each job's future."""

    def __init__(self, vocabulary: Vocabulary, workers: int = 2, memory_mb: int = 2048) -> None:
        self.compiles = 0
        """Patterns handed to a worker process so far (cache hits and shared compiles never get here)."""
        self._jobs: queue.SimpleQueue[CompileJob | None] = queue.SimpleQueue()
        payload = pickle.dumps(vocabulary)  # once, not once per worker start
        self._workers = [_Worker(payload, memory_mb * 2**20) for _ in range(max(1, workers))]
        self._count_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._dispatch, args=(w,), name=f"tunelab-compile-{i}", daemon=True)
            for i, w in enumerate(self._workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def size(self) -> int:
        return len(self._workers)

    def submit(self, job: CompileJob) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        """Stop the dispatch threads and kill the worker processes (jobs still queued fail as abandoned)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        for worker in self._workers:
            worker.stop()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.set_exception(CompileFailure("abandoned"))

    def _dispatch(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.start()  # warm, before the first job; a failure here is retried (and reported) on use
        while (job := self._jobs.get()) is not None:
            if not job.wanted():
                job.future.set_exception(CompileFailure("abandoned"))
                continue
            with self._count_lock:
                self.compiles += 1
            try:
                index, size = worker.run(job)
            except CompileFailure as exc:
                job.future.set_exception(exc)
            except Exception as exc:  # the worker could not start: a broken install, not the pattern
                job.future.set_exception(CompileFailure("crash", f"{type(exc).__name__}: {exc}"))
            else:
                job.future.set_result((index, size))


class _Worker:
    """One compile process, started on demand and replaced after it is killed or dies."""

    def __init__(self, vocabulary: bytes, memory_bytes: int) -> None:
        self.vocabulary = vocabulary
        self.memory_bytes = memory_bytes
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.stop()
        # A fresh interpreter that imports this module only: no copy of the server's threads (as fork would make),
        # no re-run of the server's main module (as multiprocessing's spawn does), and no torch in its address
        # space, so the memory limit measures the compile.
        ours, theirs = socket.socketpair()
        code = f"from tunelab.serve.compile_pool import serve_compiles; serve_compiles({theirs.fileno()})"
        path = os.pathsep.join(p for p in (str(_SOURCE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send((self.memory_bytes, self.vocabulary))
        if not self.conn.poll(_STARTUP_SECONDS):
            self.stop()
            raise RuntimeError(f"the constraint compile process did not start within {_STARTUP_SECONDS:.0f}s")
        self.conn.recv()  # "ready" (EOFError if it died starting)

    def run(self, job: CompileJob) -> tuple[Index, int]:
        self.start()
        assert self.conn is not None  # set by start
        try:
            self.conn.send((job.kind, job.text, job.max_repeat))
            if not self.conn.poll(job.timeout):
                self.stop()
                with contextlib.suppress(Exception):  # replace it now: the next pattern need not wait for it
                    self.start()
                raise CompileFailure("timeout")
            reply = self.conn.recv_bytes()
        except (EOFError, OSError):
            code = self.stop()
            # SIGABRT: native code failed an allocation under RLIMIT_AS; SIGKILL: the kernel's OOM killer.
            memory = code in (-signal.SIGABRT, -signal.SIGKILL)
            raise CompileFailure("memory" if memory else "crash", f"exit code {code}") from None
        status, value = pickle.loads(reply)  # from our own child process
        if status == "ok":
            return value, len(reply)
        if status == "memory":
            self.stop()  # after a MemoryError the process may hold a fragmented heap: start afresh
        raise CompileFailure(status, value)

    def stop(self) -> int | None:
        """Kill the process (if any); its exit code."""
        process, self.process = self.process, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


def serve_compiles(fd: int) -> None:
    """A worker process's loop on socket `fd`: (kind, text, max_repeat) in, ("ok", Index) or (reason, text) out."""
    conn = Connection(fd)
    memory_bytes, vocabulary = conn.recv()
    _limit_memory(memory_bytes)
    vocab: Vocabulary = pickle.loads(vocabulary)
    conn.send("ready")
    while True:
        try:
            kind, text, max_repeat = conn.recv()
        except (EOFError, OSError):  # the server closed the socket or exited: nothing more to do
            return
        try:
            reply = pickle.dumps(("ok", compile_index(kind, text, max_repeat, vocab)))
        except MemoryError:
            reply = pickle.dumps(("memory", ""))
        except PatternLimitError as exc:
            reply = pickle.dumps(("limit", str(exc)))
        except Exception as exc:  # outlines-core's errors for patterns or schemas it cannot compile
            reply = pickle.dumps(("invalid", str(exc)))
        conn.send_bytes(reply)


def compile_index(kind: Kind, text: str, max_repeat: int, vocabulary: Vocabulary) -> Index:
    """The token automaton for a regex, or for a JSON schema (its regex is checked against the repeat limit)."""
    if kind == "schema":
        text = outlines_schema.build_regex_from_schema(text)
        check_repeats(text, PatternLimits(max_repeat=max_repeat), WHAT["schema"])
    return Index(text, vocabulary)


def _limit_memory(limit: int) -> None:
    if resource is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
