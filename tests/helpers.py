"""Shared pieces of the training tests: a config for the tiny model and the colour task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.tiny import write_color_task
from tunelab.config import TunelabConfig, load_config
from tunelab.methods.base import StepHook

ROOT = Path(__file__).resolve().parents[1]
"""The repository: examples/ and benchmarks/ are read from here."""


def tiny_config(tmp_path: Path, model_dir: Path, *overrides: str, name: str = "run") -> TunelabConfig:
    data = tmp_path / "color.jsonl"
    if not data.exists():
        write_color_task(data, 160)
    return load_config(
        None,
        [
            f"data.train={data}",
            f"model.source={model_dir}",
            f"output.dir={tmp_path / 'runs'}",
            f"output.name={name}",
            "training.precision=fp32",
            "training.learning_rate=3e-3",
            "training.batch_size=8",
            "training.epochs=3",
            "training.log_every=2",
            "eval.max_new_tokens=4",
            "eval.max_examples=8",
            *overrides,
        ],
    )


class AfterStep(StepHook):
    """A step hook that calls `fn(step)` after every optimizer step (tests watch or stop training with it)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_step_end(self, step: int) -> None:
        self.fn(step)
