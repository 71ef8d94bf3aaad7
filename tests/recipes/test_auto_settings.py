"""`training.learning_rate/epochs/batch_size: auto` through the config and a real run on the tiny model: the
values chosen and written into the run's config.yaml (and printed with their rule), accepted by `tunelab
validate`, `tunelab plan` and a study's search space, and refused with the usual clear error when misspelt."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rich.console import Console

from tests.helpers import tiny_config
from tests.recipes.tune.common import LR, study_config
from tunelab.cli.main import main
from tunelab.config import dump_config, load_config
from tunelab.core.errors import ConfigError
from tunelab.recipes.plan import plan_run
from tunelab.recipes.run import run_training
from tunelab.recipes.tune.space import trial_config
from tunelab.train.auto import RunStats, auto_epochs, auto_learning_rate

AUTO = ["training.learning_rate=auto", "training.epochs=auto", "training.batch_size=auto"]
QUIET = ["eval.generate=false", "eval.baseline=false"]


def test_auto_reads_back_as_written_and_a_number_clears_it(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.train={tmp_path / 'x.jsonl'}", *AUTO])
    assert cfg.training.auto == {"learning_rate", "epochs", "batch_size"}
    written = yaml.safe_load(dump_config(cfg))["training"]
    assert (written["learning_rate"], written["epochs"], written["batch_size"]) == ("auto", "auto", "auto")
    assert "auto" not in written
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    fixed = load_config(path, ["training.epochs=2"])
    assert fixed.training.auto == {"learning_rate", "batch_size"} and fixed.training.epochs == 2


def test_a_misspelt_auto_is_the_usual_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: x.jsonl}\ntraining:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}:3" in text and "training.learning_rate" in text and "valid number" in text


def test_a_run_chooses_prints_and_writes_the_settings(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Four steps are enough to see the choice made and written (the epochs chosen are not all trained).
    cfg = tiny_config(tmp_path, tiny_model_dir, *QUIET, *AUTO, "training.max_steps=4")
    console = Console(record=True, width=200)
    result = run_training(cfg, console=console)
    written = yaml.safe_load((result.run_dir / "config.yaml").read_text())["training"]
    # The colour task: 144 training rows (16 held out), so batch 8 (the small-data batch) and 18 steps a pass.
    stats = RunStats(144, 10.0, 2.0, 1_000, 100, "lora", "sft")
    epochs, lr = auto_epochs(stats, 8, 1)[0], auto_learning_rate(stats, 8, 1)[0]
    assert (written["batch_size"], written["epochs"], written["learning_rate"]) == (8, epochs, lr)
    assert result.final["steps"] == 4
    out = console.export_text()
    assert "batch_size 8 (auto: 144 rows)" in out
    assert f"epochs {epochs} (auto: 144 rows, 18 steps per pass" in out
    assert f"learning_rate {lr:g} (auto: lora, batch 8)" in out
    # The written config trains as is: the chosen numbers, nothing left to choose.
    assert load_config(result.run_dir / "config.yaml").training.auto == frozenset()


def test_validate_and_plan_accept_auto(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = study_config(tmp_path, tiny_model_dir, {"trials": 2}, training={"epochs": "auto", "batch_size": "auto"})
    assert main(["validate", str(path)]) == 0
    assert "is valid" in capsys.readouterr().out
    plan = plan_run(load_config(path), probe_steps=2)
    stats = RunStats(144, 10.0, 2.0, 1_000, 100, "lora", "sft")  # only rows and the method matter here
    assert plan.train_rows == 144 and plan.steps == 18 * auto_epochs(stats, 8, 1)[0]


def test_a_study_tunes_an_auto_field(tmp_path: Path, tiny_model_dir: Path) -> None:
    tune = {"trials": 2, "params": {"training.learning_rate": LR}}
    path = study_config(tmp_path, tiny_model_dir, tune, training={"learning_rate": "auto", "epochs": "auto"})
    cfg = load_config(path)  # the space is checked against the field: a float range fits `learning_rate: auto`
    trial = trial_config(cfg, {"training.learning_rate": 2e-3}, out_dir=tmp_path, name="t0")
    assert trial.training.learning_rate == 2e-3 and trial.training.auto == {"epochs"}
