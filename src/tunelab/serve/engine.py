"""The generation engine: one worker thread runs every sequence in a continuously batched decode loop.

HTTP handlers `submit` sequences and read `Event`s from an asyncio queue; the worker admits waiting sequences
between decode steps (prefilled together, then joined to the running `Batch`), samples each row with its own
settings, turns tokens into text, applies stop tokens, stop strings and `max_tokens`, and drops finished or
cancelled rows. Throughput grows with load because one forward pass serves every row in flight.

A failure stays with the rows it belongs to: a prompt whose prefill fails is retried alone (so one bad prompt
does not fail the prompts admitted with it), and an exception while sampling one row ends that row only. Each
failure is logged with an id; the client is told the id, not the exception's text.

The model is touched only by this thread; `call` runs other model work (loading an adapter) between steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from peft.tuners.lora.layer import ParamWrapper
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.models.generate import stop_token_ids
from tunelab.models.rope import context_length
from tunelab.serve.batch import Batch, prefill
from tunelab.serve.errors import error_id
from tunelab.serve.metrics import ServerMetrics
from tunelab.serve.sampling import Constraint, Sampler, SamplingParams

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
_UNKNOWN = object()


class QueueFullError(Exception):
    """More sequences are waiting than the engine's queue holds; the caller should answer 429."""


class EngineStoppedError(Exception):
    """The engine's worker thread is not running (stopped, or died); the caller should answer 503."""


@dataclass(frozen=True)
class Event:
    """New text for choice `index`; `finish_reason` is set on its last event ("stop", "length" or "error").

    `error` (with finish_reason "error") is a message safe to show the client, and `error_status` the HTTP status
    it calls for: 500 for a failure (logged under the id the message names), 503 when the engine stopped.
    """

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    error_status: int = 500


class Handle:
    """One HTTP request's link to its sequences: events arrive on `events` in the server's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, event: Event) -> None:
        # RuntimeError: the request's event loop has closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        """Stop generating for this request (client gone, timeout); its rows leave at the next step."""
        self.cancelled.set()


@dataclass
class SequenceSpec:
    """What to generate for one choice."""

    index: int
    prompt: list[int]
    params: SamplingParams
    constraint: Constraint | None = None
    adapter: str | None = None


@dataclass
class _Sequence:
    spec: SequenceSpec
    handle: Handle
    sampler: Sampler
    generated: list[int] = field(default_factory=list)
    sent: int = 0
    next_token: int = -1


class Engine:
    """Continuous-batching generation for one causal LM (optionally peft-wrapped with several LoRA adapters)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._mixes = mixes_adapters(model)
        self._adapter: str | object | None = _UNKNOWN
        """The active adapter (None: the base model) where adapters cannot share a batch; `_UNKNOWN` until set."""
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.metrics = metrics
        self.stops = set(stop_token_ids(model, tokenizer))
        pad = cast(int | None, tokenizer.pad_token_id)  # one token's id (transformers types it for lists too)
        self.pad_id = pad if pad is not None else min(self.stops)
        self.context_length = context_length(model.config) or 2048  # a dynamic RoPE scaling's reach included
        self._waiting: deque[_Sequence] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._active: list[_Sequence] = []
        self._batch = Batch(model)
        self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def set_model(self, model: nn.Module) -> None:
        """Swap in a wrapped model (the base inside a PeftModel); only from the engine thread, via `call`."""
        self.model = model
        self._batch.model = model

    @property
    def queue_depth(self) -> int:
        """Sequences waiting for a batch slot (cancelled ones are not counted: they will never run)."""
        with self._wake:  # the worker pops from the deque meanwhile; iterating it unlocked can raise
            return sum(1 for s in self._waiting if not s.handle.cancelled.is_set())

    @property
    def active_count(self) -> int:
        """Rows in the running batch."""
        return len(self._active)

    @property
    def alive(self) -> bool:
        """True while the worker thread runs and has not been told to stop."""
        return self._thread.is_alive() and not self._stopped

    def submit(self, specs: list[SequenceSpec], handle: Handle) -> None:
        """Queue `specs` (one request's choices, all or none); raises `QueueFullError` when the queue is full and
        `EngineStoppedError` when no worker would ever run them."""
        # Every sampler is built before any sequence is queued: if one cannot be built, none is left decoding
        # for a request that has already failed.
        sequences = [_Sequence(spec, handle, Sampler(spec.params, spec.constraint)) for spec in specs]
        with self._wake:
            if not self.alive:
                raise EngineStoppedError("the generation engine is not running")
            # Cancelled entries (client gone while waiting) hold no place in the queue.
            self._waiting = deque(s for s in self._waiting if not s.handle.cancelled.is_set())
            if len(self._waiting) + len(sequences) > self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} sequences already waiting (limit {self.max_queue})")
            self._waiting.extend(sequences)
            self._report_queue()
            self._wake.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the worker thread between decode steps (so it never races a forward pass)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not (self._stopped or self._waiting or self._calls or self._active):
                            self._wake.wait()
                        if self._stopped:
                            break
                        calls = list(self._calls)
                        self._calls.clear()
                        admitted = self._take(self.max_batch_size - len(self._active))
                        self._report_queue()
                    for fn, future in calls:
                        _run_call(fn, future)
                    if calls:  # a call may have loaded an adapter, and made it the active one
                        self._mixes, self._adapter = mixes_adapters(self.model), _UNKNOWN
                    try:
                        self._admit([s for s in admitted if not s.handle.cancelled.is_set()])
                        if self._active:
                            self._step()
                    except Exception as exc:  # a bug in the bookkeeping: fail the rows in flight, keep serving
                        rows = {id(s): s for s in [*self._active, *admitted]}  # admitted rows may be active too
                        self._fail(list(rows.values()), exc, "generation failed")
                        self._active = []
                        self._batch.keep([])
        finally:
            self._abandon()

    def _take(self, room: int) -> list[_Sequence]:
        """Up to `room` waiting sequences, first come first served. On a model whose adapters cannot share a batch,
        only those asking for the first waiting one's adapter, and none until the rows in flight of another adapter
        are done (so no adapter waits behind a stream of another's); the rest keep their place in the queue."""
        if self._mixes or not self._waiting:
            return [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        adapter = self._waiting[0].spec.adapter
        if self._active and self._active[0].spec.adapter != adapter:
            return []
        taken, kept = [], deque()
        for seq in self._waiting:
            (taken if len(taken) < room and seq.spec.adapter == adapter else kept).append(seq)
        self._waiting = kept
        return taken

    def _abandon(self) -> None:
        """The worker is ending (stopped, or killed by an error): tell every request still here, so none waits
        for its deadline, and refuse new ones."""
        with self._wake:
            self._stopped = True
            left = [*self._waiting, *self._active]
            self._waiting.clear()
            self._report_queue()
        self._active = []
        message = "The generation engine stopped before this request finished; retry on a running server."
        for seq in left:
            if not seq.handle.cancelled.is_set():
                seq.handle.emit(Event(seq.spec.index, "", "error", len(seq.generated), message, error_status=503))

    def _admit(self, new: list[_Sequence]) -> None:
        if not new:
            return
        try:
            prompts = [s.spec.prompt for s in new]
            logits, cache, mask = prefill(self.model, prompts, self.pad_id, self._adapter_args(new))
        except Exception as exc:
            if len(new) == 1:
                self._fail(new, exc, "prefill failed")
                return
            # One bad prompt must not fail the prompts admitted with it: prefill each alone, drop those that fail.
            for seq in new:
                self._admit([seq])
            return
        self._batch.join(cache, mask)
        self._active.extend(new)
        self._sample(new, logits)

    def _step(self) -> None:
        if self.metrics:
            self.metrics.batch_size.observe(len(self._active))
        try:
            logits = self._batch.step([s.next_token for s in self._active], self._adapter_args(self._active))
        except Exception as exc:  # the shared forward pass (a bug or out of memory): every row in it fails
            self._fail(self._active, exc, "decode step failed")
            self._active = []
            self._batch.keep([])
            return
        self._sample(list(self._active), logits)

    def _sample(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each row's next token (`logits` has one row per entry of `rows`), emit text, drop finished rows."""
        finished: set[int] = set()
        for offset, seq in enumerate(rows):
            if seq.handle.cancelled.is_set():
                finished.add(id(seq))
                continue
            try:
                done = self._advance(seq, seq.sampler.pick(logits[offset], seq.generated))
            except Exception as exc:  # this row's own settings or constraint: only this row fails
                self._fail([seq], exc, "sampling failed")
                done = True
            if done:
                finished.add(id(seq))
        if finished:
            keep = [i for i, s in enumerate(self._active) if id(s) not in finished]
            self._active = [self._active[i] for i in keep]
            self._batch.keep(keep)

    def _advance(self, seq: _Sequence, token: int) -> bool:
        """Record `token` for `seq`, send the text that is safe to send; True when the sequence is done."""
        params = seq.spec.params
        if token in self.stops:
            self._finish(seq, self._text(seq), "stop")
            return True
        seq.generated.append(token)
        seq.next_token = token
        if self.metrics:
            self.metrics.tokens_generated.inc()
        text = self._text(seq)
        cut = _find_stop(text, params.stop, seq.sent)
        if cut is not None:
            self._finish(seq, text[:cut], "stop")
            return True
        constraint_done = seq.spec.constraint is not None and seq.spec.constraint.is_finished()
        if constraint_done or len(seq.generated) >= params.max_tokens:
            self._finish(seq, text, "stop" if constraint_done else "length")
            return True
        if len(seq.spec.prompt) + len(seq.generated) >= self.context_length:
            self._finish(seq, text, "length")
            return True
        safe = len(text) - _held_back(text, params.stop)
        if text[:safe].endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            safe -= 1
        if safe > seq.sent:
            seq.handle.emit(Event(seq.spec.index, text[seq.sent : safe], None, len(seq.generated)))
            seq.sent = safe
        return False

    def _finish(self, seq: _Sequence, text: str, reason: str) -> None:
        seq.handle.emit(Event(seq.spec.index, text[seq.sent :], reason, len(seq.generated)))

    def _fail(self, rows: list[_Sequence], exc: Exception, what: str) -> None:
        """End `rows` with an error event; the exception goes to the log under an id the client is given."""
        ident = error_id()
        log.error("%s for %d sequence(s) [%s]", what, len(rows), ident, exc_info=exc)
        message = f"Generation failed (error id {ident}); the server log has the details."
        for seq in rows:
            seq.handle.emit(Event(seq.spec.index, "", "error", len(seq.generated), message))

    def _text(self, seq: _Sequence) -> str:
        return cast(str, self.tokenizer.decode(seq.generated, skip_special_tokens=True))  # one sequence: one text

    def _adapter_args(self, rows: list[_Sequence]) -> dict[str, Any]:
        """The forward's keyword arguments that route `rows` through their adapters: one name per row for peft, or
        none after making the rows' one adapter the active one (a model whose adapters cannot share a batch)."""
        if not hasattr(self.model, "peft_config"):
            return {}
        if self._mixes:
            return {"adapter_names": [s.spec.adapter or BASE_ADAPTER for s in rows]}
        self._use_adapter(rows[0].spec.adapter)  # `_take` admitted only rows of one adapter
        return {}

    def _use_adapter(self, name: str | None) -> None:
        """Make `name` (None: the base model) the active adapter of a model that cannot mix them in a batch."""
        if name == self._adapter:
            return
        model = cast(Any, self.model)
        if name is None:
            model.base_model.disable_adapter_layers()
        else:
            model.base_model.enable_adapter_layers()
            model.set_adapter(name)
        self._adapter = name

    def _report_queue(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self.queue_depth)


def mixes_adapters(model: nn.Module) -> bool:
    """Whether peft can run rows of different adapters in one batch of `model`: not once LoRA sits on parameters
    rather than layers (the expert tensors of a mixture of experts), which peft's mixed batches do not support."""
    return not any(isinstance(m, ParamWrapper) for m in model.modules())


def _run_call(fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


def _find_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the first stop string starts in `text`, looking only where a new one could be."""
    best: int | None = None
    for stop in stops:
        at = text.find(stop, max(0, sent - len(stop) + 1))
        if at != -1 and (best is None or at < best):
            best = at
    return best


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop string (not sent until we know)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held
