"""The traffic log (`tunelab serve --log DB`): every answered request goes to a database, written by one thread.

Serving never waits for the database. A request's answer is put on a bounded queue (`put_nowait`), and a writer
thread drains it in batches, masks personal data with the data pipeline's own `mask_pii` (off the request path:
regexes over a long prompt take milliseconds) and writes one transaction per batch. When the queue is full (the
database is slow or locked) the entry is dropped and counted; when a write fails (locked past the busy timeout,
disk full, a corrupt file, a server gone) the batch is counted as failed, the first failure of each kind is
logged once, and serving goes on. Both counters are on /metrics. Retention (most rows, oldest age) is applied
by the writer every `prune_every` seconds.

The last `recent` answers are also kept in memory, so feedback that arrives before its row is written (or for a
row that was dropped) still finds what it judges. Cheap live signals (mean input length, empty-answer and
feedback rates over the last answers) are Prometheus gauges beside the server's other metrics.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from transformers import PreTrainedTokenizerBase

from tunelab.data.clean import mask_pii
from tunelab.recipes.monitor.store import (
    Feedback,
    LoggedRequest,
    Preference,
    create_tables,
    db_problem,
    find_request,
    open_database,
    prune,
    recent_requests,
    safe_url,
    write_feedback,
    write_preferences,
    write_requests,
)
from tunelab.serve.generation import Job
from tunelab.serve.metrics import ServerMetrics
from tunelab.serve.protocol import ChatCompletionRequest, CompletionRequest, GenerationFields

log = logging.getLogger("tunelab.serve")

PII_KINDS = ("email", "phone", "ip")
FEEDBACK_KINDS = ("up", "down", "correction", "choice")


@dataclass
class LogSettings:
    """How the traffic log is written. The `serve --log*` flags map one to one onto these."""

    db: str
    """SQLite file path or SQLAlchemy URL."""
    mask: tuple[str, ...] = PII_KINDS
    """Personal data masked before writing (email, phone, ip); empty: texts are written as sent."""
    max_rows: int | None = None
    """Requests kept in the log; older ones are deleted (None: no limit)."""
    max_age: float | None = None
    """Seconds a request stays in the log (None: no limit)."""
    queue_size: int = 10_000
    """Answers waiting to be written; past that, new ones are dropped (and counted)."""
    batch_size: int = 256
    """Most rows written in one transaction."""
    prune_every: float = 60.0
    """Seconds between two applications of the retention limits."""
    busy_timeout: float = 5.0
    """Seconds a SQLite write waits for a lock held by another process."""
    server: str = ""
    """This server's name in the log (several servers can share one database)."""
    recent: int = 10_000
    """Answers kept in memory for feedback that arrives before (or instead of) their row."""


class LiveSignals:
    """The cheap live signals over the last `window` answers, kept in the server's gauges."""

    def __init__(self, metrics: ServerMetrics, window: int = 1000) -> None:
        self.metrics = metrics
        self._answers: deque[tuple[int, bool]] = deque(maxlen=window)
        self._feedback: deque[str] = deque(maxlen=window)
        self._lock = threading.Lock()

    def answered(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._answers.append((len(entry.prompt), all(not a.strip() for a in entry.answers)))
            self._update()

    def judged(self, kinds: Sequence[str]) -> None:
        with self._lock:
            self._feedback.extend(kinds)
            self._update()

    def _update(self) -> None:
        answers = max(1, len(self._answers))
        self.metrics.live_input_chars.set(sum(n for n, _ in self._answers) / answers)
        self.metrics.live_empty_rate.set(sum(e for _, e in self._answers) / answers)
        for kind in FEEDBACK_KINDS:
            self.metrics.live_feedback_rate.labels(kind).set(self._feedback.count(kind) / answers)


class LogUnavailable(Exception):
    """The log database could not be read or written right now (the message says why)."""


class TrafficLog:
    """The server's traffic log: `record` answers (never blocks), `store` feedback and preferences (blocking: call
    it from a worker thread), `lookup` an answer by response id."""

    def __init__(self, settings: LogSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.engine: Engine = open_database(settings.db, settings.busy_timeout)
        self.where = safe_url(str(self.engine.url))
        self.metrics = metrics
        self.live = LiveSignals(metrics)
        self._queue: queue.Queue[LoggedRequest] = queue.Queue(maxsize=settings.queue_size)
        self._recent: OrderedDict[str, LoggedRequest] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._reported: set[str] = set()
        self._tables = False
        self._thread = threading.Thread(target=self._write_loop, name="tunelab-traffic-log", daemon=True)

    def start(self) -> TrafficLog:
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for at most `timeout` seconds), then stop the writer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.engine.dispose()

    def record(self, entry: LoggedRequest) -> None:
        """Queue an answer for writing; when the queue is full it is dropped and counted, never waited for."""
        with self._recent_lock:
            self._recent[entry.response_id] = entry
            while len(self._recent) > self.settings.recent:
                self._recent.popitem(last=False)
        self.live.answered(entry)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.metrics.log_dropped.inc()
        self.metrics.log_queue.set(self._queue.qsize())

    @property
    def pending(self) -> int:
        """Answers queued and not yet written."""
        return self._queue.qsize()

    def lookup(self, response_id: str) -> LoggedRequest | None:
        """The answer with this id, from memory or the database (raises LogUnavailable when the database cannot
        be read and the answer is not in memory)."""
        with self._recent_lock:
            found = self._recent.get(response_id)
        if found is not None:
            return found
        try:
            self._ensure_tables()
            return find_request(self.engine, response_id)
        except SQLAlchemyError as exc:
            raise LogUnavailable(self._problem("read", exc)) from None

    def recent(self, limit: int, kind: str | None = None) -> list[LoggedRequest]:
        """The newest logged answers (from the database), newest first; raises LogUnavailable."""
        try:
            self._ensure_tables()
            return recent_requests(self.engine, limit, kind)
        except SQLAlchemyError as exc:
            raise LogUnavailable(self._problem("read", exc)) from None

    def store(self, feedback: Feedback | None, preferences: Sequence[Preference], kinds: Sequence[str] = ()) -> None:
        """Write feedback and preferences now, masked, in one transaction (`kinds` feed the live feedback rates);
        raises LogUnavailable when the write fails."""
        rows = [] if feedback is None else [self._masked_feedback(feedback)]
        masked = [
            replace(p, messages=self._mask_messages(p.messages), chosen=self._mask(p.chosen),
                    rejected=self._mask(p.rejected))
            for p in preferences
        ]  # fmt: skip
        try:
            self._ensure_tables()
            with self.engine.begin() as conn:
                write_feedback(conn, rows)
                write_preferences(conn, masked)
        except SQLAlchemyError as exc:
            raise LogUnavailable(self._problem("write", exc)) from None
        self.live.judged(kinds)

    def _write_loop(self) -> None:
        last_prune = 0.0
        while True:
            batch = self._take_batch()
            if batch:
                self._write(batch)
            if time.monotonic() - last_prune > self.settings.prune_every and self._tables:
                self._prune()
                last_prune = time.monotonic()
            if self._stop.is_set() and self._queue.empty():
                return

    def _take_batch(self) -> list[LoggedRequest]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self.settings.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[LoggedRequest]) -> None:
        rows = [self._masked(entry) for entry in batch]
        try:
            self._ensure_tables()
            with self.engine.begin() as conn:
                write_requests(conn, rows)
            self.metrics.log_written.inc(len(rows))
        except SQLAlchemyError as exc:
            self.metrics.log_failed.inc(len(rows))
            self._report(self._problem("write", exc))
        self.metrics.log_queue.set(self._queue.qsize())

    def _prune(self) -> None:
        if self.settings.max_rows is None and self.settings.max_age is None:
            return
        try:
            with self.engine.begin() as conn:
                prune(conn, self.settings.max_rows, self.settings.max_age)
        except SQLAlchemyError as exc:
            self._report(self._problem("prune", exc))

    def _ensure_tables(self) -> None:
        if not self._tables:
            create_tables(self.engine)
            self._tables = True

    def _masked(self, entry: LoggedRequest) -> LoggedRequest:
        return replace(
            entry, prompt=self._mask(entry.prompt), messages=self._mask_messages(entry.messages),
            answers=[self._mask(a) for a in entry.answers], server=entry.server or self.settings.server,
        )  # fmt: skip

    def _masked_feedback(self, feedback: Feedback) -> Feedback:
        correction = None if feedback.correction is None else self._mask(feedback.correction)
        return replace(
            feedback, messages=self._mask_messages(feedback.messages), answer=self._mask(feedback.answer),
            correction=correction,
        )  # fmt: skip

    def _mask(self, text: str) -> str:
        return mask_pii(text, self.settings.mask) if self.settings.mask else text

    def _mask_messages(self, messages: list) -> list:
        return [
            {**m, "content": self._mask(str(m.get("content", "")))} if isinstance(m, dict) else self._mask(str(m))
            for m in messages
        ]

    def _problem(self, action: str, exc: SQLAlchemyError) -> str:
        return f"traffic log {self.where}: {action} failed: {db_problem(exc)}"

    def _report(self, problem: str) -> None:
        """Log each kind of failure once (a locked database fails every batch the same way)."""
        if problem not in self._reported:
            self._reported.add(problem)
            log.error("%s; serving goes on, unlogged rows are counted in tunelab_traffic_log_failed", problem)


def logged_request(
    body: GenerationFields,
    job: Job,
    answers: list[str],
    reasons: list[str | None],
    completion_tokens: int,
    tokenizer: PreTrainedTokenizerBase,
) -> LoggedRequest:
    """The log row of one answered request (not yet masked: the writer thread masks)."""
    messages: list[Any]
    if isinstance(body, ChatCompletionRequest):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        users = [m["content"] for m in messages if m["role"] == "user"]
        prompt = users[-1] if users else messages[-1]["content"]
    else:
        assert isinstance(body, CompletionRequest)
        messages = [p if isinstance(p, str) else tokenizer.decode(p) for p in _prompt_list(body)]
        prompt = messages[0] if messages else ""
    return LoggedRequest(
        response_id=job.response_id, created=time.time(), model=body.model,
        kind="chat" if isinstance(body, ChatCompletionRequest) else "text", prompt=prompt, messages=messages,
        answers=answers, finish_reasons=reasons, prompt_tokens=job.prompt_tokens,
        completion_tokens=completion_tokens, latency=time.monotonic() - job.arrived,
    )  # fmt: skip


def _prompt_list(body: CompletionRequest) -> list[str | list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [[int(p) for p in prompt if isinstance(p, int)]]
    return [p for p in prompt if isinstance(p, str | list)]
