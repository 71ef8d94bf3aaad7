"""Shared pieces of the training tests: a config for the tiny model and the colour task."""

from __future__ import annotations

from pathlib import Path

from tests.tiny import write_color_task
from tunelab.config import TunelabConfig, load_config


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
