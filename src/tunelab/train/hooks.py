"""What the loop reports out besides its files: each validation's metrics, to a caller that may stop the run.

A hyperparameter study prunes on the validation curve: it needs every intermediate evaluation as it happens,
and a way to end a trial that is going badly without it counting as a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ValidationHook = Callable[[int, dict[str, float]], None]
"""Called with the optimizer step and the validation metrics (`val_loss`, `val_ppl`, `val_<metric>`) after each
evaluation during training; it may raise `StopTraining`."""

MetricsHook = Callable[[dict[str, Any]], None]
"""Called with each line the loop appends to metrics.jsonl (training, validation and the final validation), on the
main process, right after it is written: experiment trackers receive the run's metrics through it."""


class StopTraining(Exception):
    """Raised by a `ValidationHook` to end the run at once: nothing more is trained, saved or evaluated (the run
    folder keeps its metrics and checkpoints so far). The caller that installed the hook catches it."""
