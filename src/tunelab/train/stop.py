"""A clean stop on SIGTERM: the loop finishes the optimizer step it is in, saves, and ends.

`kill PID`, a job scheduler's pre-emption notice and the dashboard's Stop button all send SIGTERM. Without a
handler the process dies at once and loses every step since the last `training.save_every` checkpoint; with it the
run stops at the next step boundary with its result and a checkpoint written, and `--resume` trains on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType


@dataclass
class StopRequest:
    """Set when the process was asked to stop; the loop reads it once per optimizer step."""

    requested: bool = False
    signal_name: str = ""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """Catch SIGTERM while the block runs (the previous handler comes back after it). Signals are delivered to
    the main thread only, so elsewhere (a training started from a thread) the request simply never comes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def note(signum: int, _frame: FrameType | None) -> None:
        request.requested, request.signal_name = True, signal.Signals(signum).name

    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
