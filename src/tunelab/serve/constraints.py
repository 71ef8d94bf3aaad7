"""Constrained decoding: a JSON schema or a regex becomes a token-level automaton (outlines-core) that masks logits.

outlines-core compiles a regex over the model's whole vocabulary into an index (state -> allowed tokens) once;
each sequence then walks it with a cheap `Guide`. Compiling costs milliseconds for most patterns, seconds for
large schemas on a 50k vocabulary, and for some short patterns more than any server has (`[ab]*a[ab]{30}`), so:

- static limits (`pattern_limits`) refuse long patterns and large repetition counts before anything compiles;
- compiles run in a small pool of processes with time and memory limits (`compile_pool`), never in the server;
- requests for the same pattern share one compile, different patterns compile in parallel up to the pool size,
  and a request waits only until its own deadline;
- results, failures included, are cached per pattern (bounded), so a refused pattern costs nothing the next time.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import cast

from outlines_core import Guide, Index, Vocabulary
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tunelab.core.errors import TunelabError
from tunelab.serve.compile_pool import WHAT, CompileFailure, CompileJob, CompilePool, Kind
from tunelab.serve.config import ServeConfig
from tunelab.serve.pattern_limits import PatternLimitError, PatternLimits, check_length, check_repeats

# Any JSON object: the schema outlines-core turns into a (depth-limited) regex for `response_format: json_object`.
ANY_OBJECT_SCHEMA = '{"type": "object"}'
_CACHE_ENTRIES = 64
_CACHE_BYTES = 1 << 30  # compiled tables kept in the server; one large schema on a 50k vocabulary is ~100 MB
_WAITERS_PER_WORKER = 8  # requests blocked on compiles, per worker: the rest of the server's threads stay free


class ConstraintError(TunelabError):
    """A JSON schema or regex that cannot be compiled into a decoding constraint (HTTP `status`, OpenAI `code`)."""

    status = 400
    code: str | None = None


class PatternTooComplexError(ConstraintError):
    """A pattern over a static limit, or one whose compile overran its time or memory."""

    code = "pattern_too_complex"


class ConstraintTimeoutError(ConstraintError):
    """The request's own deadline passed while its pattern was compiling."""

    status = 504
    code = "timeout"


class ConstraintBusyError(ConstraintError):
    """Too many requests are already waiting for compiles."""

    status = 429
    code = "constraint_queue_full"


class GrammarConstraint:
    """One sequence's position in a compiled pattern; implements `tunelab.serve.sampling.Constraint`."""

    def __init__(self, index: Index, eos_token_id: int) -> None:
        self.guide = Guide(index)
        self.eos_token_id = eos_token_id

    def allowed(self) -> list[int]:
        return self.guide.get_tokens()

    def advance(self, token_id: int) -> None:
        if not self.guide.is_finished():
            self.guide.advance(token_id)

    def is_finished(self) -> bool:
        return self.guide.is_finished()


@dataclass
class _Flight:
    """A compile in progress and how many requests wait for it."""

    future: Future
    waiters: int = 0


@dataclass(frozen=True)
class _Refusal:
    """A cached failure: raised afresh (a new exception each time) for every later request of the pattern."""

    kind: type[ConstraintError]
    message: str

    def error(self) -> ConstraintError:
        return self.kind(self.message)


class ConstraintCompiler:
    """Builds `GrammarConstraint`s for one tokenizer: limits checked, compiles pooled, shared and cached.

    Thread-safe: request threads call `regex` / `json_schema` concurrently; the lock guards only the tables."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, eos_token_id: int, config: ServeConfig | None = None
    ) -> None:
        self.eos_token_id = eos_token_id
        self.config = config or ServeConfig()
        self.vocabulary = _vocabulary(tokenizer, eos_token_id)
        self._cache: OrderedDict[tuple[Kind, str], tuple[Index, int] | _Refusal] = OrderedDict()
        self._cache_bytes = 0
        self._flights: dict[tuple[Kind, str], _Flight] = {}
        self._waiting = 0
        self._pool: CompilePool | None = None
        self._lock = threading.Lock()

    @property
    def compiles(self) -> int:
        """Patterns compiled in a worker process so far."""
        return self._pool.compiles if self._pool else 0

    def json_schema(self, schema: dict | str, deadline: float | None = None) -> GrammarConstraint:
        """Output that parses as JSON and validates against `schema` (a JSON-schema dict or its text).

        `deadline` (time.monotonic()) bounds the wait for a new schema's compile."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        try:
            check_length(text, self._limits(), "JSON schema in response_format")
        except PatternLimitError as exc:
            raise PatternTooComplexError(str(exc)) from None
        return GrammarConstraint(self._index(("schema", text), deadline), self.eos_token_id)

    def regex(self, pattern: str, deadline: float | None = None) -> GrammarConstraint:
        """Output that matches the regular expression `pattern` in full."""
        limits = self._limits()
        try:
            check_length(pattern, limits, "regex")
            check_repeats(pattern, limits, "regex")
        except PatternLimitError as exc:
            raise PatternTooComplexError(str(exc)) from None
        return GrammarConstraint(self._index(("regex", pattern), deadline), self.eos_token_id)

    def close(self) -> None:
        """Stop the compile processes (a later compile starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _limits(self) -> PatternLimits:
        return PatternLimits(max_chars=self.config.max_pattern_chars, max_repeat=self.config.max_pattern_repeat)

    def _index(self, key: tuple[Kind, str], deadline: float | None) -> Index:
        """The compiled index for `key`: from the cache, from a compile in flight, or from a new compile."""
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                if isinstance(cached, _Refusal):
                    raise cached.error()
                return cached[0]
            pool = self._pool_locked()
            if self._waiting >= _WAITERS_PER_WORKER * pool.size:
                raise ConstraintBusyError(
                    f"The server is compiling constraints for {self._waiting} other requests; retry after a short "
                    "wait (patterns it has compiled before are answered at once)."
                )
            self._waiting += 1
            flight = self._flights.get(key)
            if flight is not None:
                flight.waiters += 1
            else:
                job = CompileJob(key[0], key[1], self.config.constraint_timeout, self.config.max_pattern_repeat)
                flight = self._flights[key] = _Flight(job.future, waiters=1)
                job.wanted = lambda f=flight: f.waiters > 0  # skipped if every waiter gave up while it queued
                job.future.add_done_callback(lambda done, k=key, f=flight: self._settle(k, f, done))
                pool.submit(job)
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            return flight.future.result(timeout=timeout)[0]
        except FutureTimeout:
            raise ConstraintTimeoutError(
                f"The request's time ran out while its {WHAT[key[0]]} was compiling into a decoding constraint "
                f"(new patterns compile in a separate process, up to {self.config.constraint_timeout:g}s each). "
                "Retry: the compile goes on, and a compiled pattern is answered at once."
            ) from None
        except CompileFailure as failure:
            raise self._refusal(key[0], failure).error() from None
        finally:
            with self._lock:
                flight.waiters -= 1
                self._waiting -= 1

    def _pool_locked(self) -> CompilePool:
        if self._pool is None:
            self._pool = CompilePool(
                self.vocabulary, workers=self.config.constraint_workers, memory_mb=self.config.constraint_memory_mb
            )
        return self._pool

    def _settle(self, key: tuple[Kind, str], flight: _Flight, done: Future) -> None:
        """When a compile ends (on a pool thread): cache its index or its refusal, and retire the flight."""
        try:
            entry: tuple[Index, int] | _Refusal | None = done.result()
        except CompileFailure as failure:
            entry = None if failure.reason == "abandoned" else self._refusal(key[0], failure)
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if entry is None:
                return
            self._cache[key] = entry
            self._cache_bytes += entry[1] if isinstance(entry, tuple) else 0
            while len(self._cache) > _CACHE_ENTRIES or (self._cache_bytes > _CACHE_BYTES and len(self._cache) > 1):
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old[1] if isinstance(old, tuple) else 0

    def _refusal(self, kind: Kind, failure: CompileFailure) -> _Refusal:
        what = WHAT[kind]
        config = self.config
        if failure.reason == "limit":
            return _Refusal(PatternTooComplexError, failure.detail)
        if failure.reason == "timeout":
            return _Refusal(
                PatternTooComplexError,
                f"Compiling the {what} into a decoding constraint took longer than {config.constraint_timeout:g}s "
                "(the server's --constraint-timeout), so it was stopped. Some short patterns need exponentially "
                "many automaton states (e.g. `[ab]*a[ab]{20}`: a repeated choice, then a long counted run); "
                "simplify the pattern.",
            )
        if failure.reason == "memory":
            return _Refusal(
                PatternTooComplexError,
                f"Compiling the {what} into a decoding constraint needed more than {config.constraint_memory_mb} MB "
                "(the server's --constraint-memory-mb), so it was stopped; simplify the pattern.",
            )
        if failure.reason == "crash":
            return _Refusal(
                ConstraintError, f"The process compiling the {what} stopped unexpectedly ({failure.detail})."
            )
        if kind == "schema":
            return _Refusal(
                ConstraintError,
                f"The JSON schema in response_format cannot be used for constrained decoding: {failure.detail}. "
                "Supported: objects, arrays, strings (with pattern/format), numbers, integers, booleans, enum, "
                "const, anyOf and $ref within the schema.",
            )
        return _Refusal(
            ConstraintError,
            f"The regex cannot be compiled into a decoding constraint: {failure.detail}. Check the pattern "
            "(Rust regex syntax, no look-around or back-references).",
        )


def _vocabulary(tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> Vocabulary:
    """Each token's text as bytes (byte-level BPE spells bytes as printable characters; undo that)."""
    # transformers' converter module pulls in the slow-tokenizer machinery: loaded when a server first constrains.
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    fast = getattr(tokenizer, "is_fast", False)  # backed by `tokenizers`, whose spec names the pre-tokenizer
    byte_level = "ByteLevel" in cast(PreTrainedTokenizerFast, tokenizer).backend_tokenizer.to_str() if fast else False
    mapping: dict[bytes, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token in special or token_id == eos_token_id:
            continue
        if byte_level and all(c in to_byte for c in token):
            data = bytes(to_byte[c] for c in token)
        else:
            # SentencePiece-style vocabularies spell a leading space as U+2581 and bytes as <0xNN>.
            if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                data = bytes([int(token[3:5], 16)])
            else:
                data = token.replace("\u2581", " ").encode()
        mapping.setdefault(data, []).append(token_id)
    return Vocabulary(eos_token_id, mapping)
