"""An order-preserving parallel map over a stream, with a bounded number of chunks in flight.

`multiprocessing.Pool.imap` reads its whole input ahead of the workers, so on a file of millions of rows the
memory would grow with the file; here at most `2 * num_proc` chunks exist at any time.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    num_proc: int = 1,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[R]:
    """`map(fn, items)` in order, on `num_proc` processes when more than one; `fn` must be picklable.
    `initializer(*initargs)` runs once in every worker (and here, when there are none): the place to set up
    state that is too costly to send with every item, such as a tokenizer."""
    if num_proc <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    # fork is fast and shares the imported modules; spawn is the only choice where fork does not exist.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    start = (initializer, initargs)
    with ProcessPoolExecutor(num_proc, mp_context=context, initializer=_start_worker, initargs=start) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` consecutive items."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    _collect_rarely()  # for the worker's whole life: it only ever streams rows
    if initializer is not None:
        initializer(*initargs)


FEW_COLLECTIONS = (50_000, 20, 1_000)
"""Garbage-collector thresholds while rows stream through (Python's default is 700, 10, 10)."""


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage rarely while millions of small row objects come and go.

    Rows make no reference cycles worth collecting, but each collection of the oldest generation walks every live
    object; with the default thresholds, tokenising short chat rows spent a third of its time there (8.8k rows/s
    against 14k with collections rare). What existed before is frozen out of the walks; thresholds come back after.
    """
    before = gc.get_threshold()
    _collect_rarely()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _collect_rarely() -> None:
    gc.freeze()
    gc.set_threshold(*FEW_COLLECTIONS)
