"""The rules of `tunelab.train.auto` on given data statistics, each value computed by hand from the rule."""

from __future__ import annotations

import pytest

from tunelab.train.auto import (
    RunStats,
    adopt_saved,
    auto_batch_size,
    auto_epochs,
    auto_learning_rate,
    resolve_auto,
    steps_per_epoch,
)
from tunelab.train.config import TrainingSection


def stats(rows: int = 600, tokens: float = 80.0, method: str = "lora", objective: str = "sft", **kw) -> RunStats:
    return RunStats(rows, tokens, 10.0, kw.pop("params", 135_000_000), 1_800_000, method, objective, **kw)


@pytest.mark.parametrize(
    ("rows", "tokens", "batch", "why"),
    [
        (48, 80.0, 8, "48 rows"),  # small data: the smallest batch, 6 steps a pass
        (200, 80.0, 8, "200 rows"),  # 200 // 16 = 12 -> 8
        (300, 80.0, 16, "300 rows"),  # 300 // 16 = 18 -> 16
        (5000, 80.0, 16, "5000 rows"),  # never above 16
        (5000, 1000.0, 4, "1000 tokens per row: about 4096 tokens per micro-batch"),  # 4096 / 1000 -> 4
    ],
)
def test_batch_size_by_rows_and_row_length(rows: int, tokens: float, batch: int, why: str) -> None:
    assert auto_batch_size(stats(rows, tokens)) == (batch, why)


def test_batch_size_counts_every_process() -> None:
    assert auto_batch_size(stats(600, processes=1))[0] == 16  # 600 // 16 = 37 -> 16
    assert auto_batch_size(stats(600, processes=4))[0] == 8  # 600 // 64 = 9 -> 8


def test_steps_per_epoch_rounds_up_as_the_loop_does() -> None:
    assert steps_per_epoch(100, 8, 1) == 13  # 12.5 batches -> 13
    assert steps_per_epoch(100, 8, 2) == 7  # 13 batches, 2 a step -> 7 (the last step takes one)
    assert steps_per_epoch(100, 8, 1, processes=2) == 7
    assert steps_per_epoch(3, 8, 4) == 1


@pytest.mark.parametrize(
    ("rows", "batch", "epochs"),
    [(2000, 16, 1), (960, 16, 2), (480, 16, 4), (32, 8, 4), (1200, 16, 2)],
)
def test_epochs_reach_the_step_target_within_bounds(rows: int, batch: int, epochs: int) -> None:
    # 2000/16 = 125 steps: one pass; 960/16 = 60: 120/60 = 2; 480/16 = 30: 4; 32/8 = 4: 30, capped at 4;
    # 1200/16 = 75: 120/75 = 1.6 -> 2.
    assert auto_epochs(stats(rows), batch, 1)[0] == epochs


def test_epochs_say_when_the_cap_cut_the_run_short() -> None:
    assert auto_epochs(stats(32), 8, 1) == (4, "32 rows, 4 steps per pass: 4 passes at most")


def test_learning_rate_by_method_model_batch_and_objective() -> None:
    assert auto_learning_rate(stats(), 8, 1) == (1e-3, "lora, batch 8")
    assert auto_learning_rate(stats(), 16, 1)[0] == 1e-3
    assert auto_learning_rate(stats(), 16, 4)[0] == 2e-3  # batch 64: 1e-3 * sqrt(4)
    assert auto_learning_rate(stats(method="full"), 16, 1)[0] == 5e-5
    lr, why = auto_learning_rate(stats(method="full", params=1_350_000_000), 16, 1)
    assert lr == 1.6e-5 and "1350M parameters" in why  # 5e-5 * sqrt(0.1) = 1.58e-5
    assert auto_learning_rate(stats(objective="dpo"), 16, 1) == (1e-4, "lora, batch 16, dpo: a tenth")


def test_resolve_sets_only_the_auto_fields_in_order() -> None:
    section = TrainingSection.model_validate({"learning_rate": "auto", "epochs": "auto", "batch_size": 4})
    done = resolve_auto(section, stats(400))
    # batch 4 as given: 100 steps a pass -> 1 epoch; the rate at batch 4.
    assert (done.training.batch_size, done.training.epochs, done.training.learning_rate) == (4, 1, 1e-3)
    assert done.training.auto == frozenset() and list(done.reasons) == ["epochs", "learning_rate"]
    assert done.reasons["epochs"] == "epochs 1 (auto: 400 rows, 100 steps per pass: about 120 steps in all)"
    untouched = resolve_auto(TrainingSection(), stats(400))
    assert untouched.training == TrainingSection() and untouched.reasons == {}


def test_a_resume_takes_the_saved_choices() -> None:
    section = TrainingSection.model_validate({"learning_rate": "auto", "epochs": "auto"})
    resumed = adopt_saved(section, {"learning_rate": 7e-4, "epochs": 3, "batch_size": 8})
    assert (resumed.learning_rate, resumed.epochs, resumed.auto) == (7e-4, 3, frozenset())
    assert adopt_saved(section, {"learning_rate": "auto"}) == section  # nothing chosen yet: choose again
