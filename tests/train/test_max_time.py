"""`training.max_time`: a run stops once its budget is spent, with its result and a checkpoint saved, and
`--resume` (with another budget) trains it to the end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import tunelab.recipes.run as train_run
from tests.helpers import AfterStep, tiny_config
from tunelab.recipes.run import run_training

SHORT = ["training.epochs=2", "eval.baseline=false", "eval.generate=false", "training.save_every=100"]


def test_max_time_stops_saves_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fit = train_run.fit

    def slow_second_step(*args, **kwargs):
        hooks = [*kwargs.get("hooks", ()), AfterStep(lambda step: time.sleep(1.0) if step == 2 else None)]
        return real_fit(*args, **{**kwargs, "hooks": hooks})

    monkeypatch.setattr(train_run, "fit", slow_second_step)
    first = run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.max_time=0.8s"))
    full = 2 * 18  # 144 training rows / 8 per step, two epochs
    assert first.final["steps"] in (1, 2)  # the budget ran out at step 2 (or earlier on a slow machine)
    assert (first.run_dir / "adapter" / "adapter_model.safetensors").is_file()  # the result is saved
    assert [p.name for p in (first.run_dir / "checkpoints").iterdir()] == [f"step-{first.final['steps']:08d}"]
    monkeypatch.setattr(train_run, "fit", real_fit)

    # Resumed with a larger budget (a budget may change between starts): the run trains to its end.
    again = run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.max_time=1h"), resume=True)
    assert again.final["steps"] == full
