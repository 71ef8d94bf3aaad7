"""`tunelab plan` and `tunelab tune --dry-run`: rows, tokens and steps as counted by hand, a time estimate from a
probe of real steps that is close to the real run's, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import tiny_config
from tests.recipes.tune.common import LR, study_config
from tunelab.cli.main import main
from tunelab.config import load_config
from tunelab.recipes.plan import plan_run
from tunelab.recipes.run import run_training
from tunelab.recipes.tune.run import trial_epochs_factor

RUN = ["training.epochs=3", "eval.generate=false", "eval.baseline=false"]


def test_plan_counts_and_estimates_the_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, *RUN)
    plan = plan_run(cfg)
    # 160 rows, 10% held out: 144 train / 16 validation; 144 / 8 = 18 steps an epoch, 3 epochs.
    assert (plan.train_rows, plan.val_rows, plan.steps, plan.epochs) == (144, 16, 54, 3.0)
    assert plan.train_tokens == 3 * plan.tokens_per_epoch and plan.probe_steps == 4
    assert plan.peak_mem_mb > 0
    assert not (tmp_path / "runs").exists()  # the probe trained in a temporary folder
    actual = run_training(cfg)
    lines = [json.loads(x) for x in (actual.run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = max(line.get("elapsed_s", 0.0) for line in lines)
    assert actual.final["steps"] == plan.steps
    assert elapsed / 3 < plan.seconds < elapsed * 3  # measured, not guessed: within a factor of 3 here


def test_tune_dry_run_prints_space_and_cost_and_runs_nothing(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tune = {"study": "d", "trials": 5, "params": {"training.learning_rate": LR,
            "training.epochs": {"type": "int", "low": 1, "high": 3}}}  # fmt: skip
    path = study_config(tmp_path, tiny_model_dir, tune)
    assert main(["tune", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "training.learning_rate" in out and "optimizer steps: 18" in out and "study: 5 trials" in out
    assert not (tmp_path / "runs" / "d").exists()  # no study, no database
    assert main(["plan", str(path)]) == 0
    assert "rows: 144 train / 16 validation" in capsys.readouterr().out


def test_study_estimate_scales_by_the_resolved_epochs_when_they_are_auto(tmp_path: Path, tiny_model_dir: Path) -> None:
    tune = {"study": "a", "trials": 2, "params": {"training.epochs": {"type": "int", "low": 1, "high": 3}}}
    cfg = load_config(study_config(tmp_path, tiny_model_dir, tune), ["training.epochs=auto"])
    # epochs: auto resolves from the data (here 144 rows -> more than one epoch): a trial's 2 epochs on average
    # is measured against that number, not against the placeholder the unresolved config holds.
    plan = plan_run(cfg)
    assert plan.epochs > 1
    assert trial_epochs_factor(cfg, plan.epochs) == pytest.approx(2 / plan.epochs)
