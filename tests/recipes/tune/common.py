"""A study config on the tiny model and the colour task, written as a YAML file (what `tunelab tune` reads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.tiny import write_color_task

LR = {"type": "loguniform", "low": 1e-4, "high": 1e-2}
"""A learning-rate range the tiny model trains in."""


def study_config(tmp_path: Path, model_dir: Path, tune: dict[str, Any], **sections: Any) -> Path:
    """`tmp_path/study.yaml`: the tiny model, 160 colour rows, one epoch of 18 steps evaluated every 4 steps, no
    generation; `tune` is the tune: section; `sections` are merged over the defaults (e.g. training={...})."""
    data = tmp_path / "color.jsonl"
    if not data.exists():
        write_color_task(data, 160)
    cfg: dict[str, Any] = {
        "model": {"source": str(model_dir)},
        "data": {"train": str(data)},
        "method": {"name": "lora", "r": 4},
        "training": {"precision": "fp32", "learning_rate": 3e-3, "batch_size": 8, "epochs": 1, "eval_every": 4},
        "eval": {"generate": False},
        "output": {"dir": str(tmp_path / "runs")},
        "tune": tune,
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tunelab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command in a subprocess."""
    command = [sys.executable, "-m", "tunelab.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
