"""The run's before/after table: intervals and paired tests from the run folder's two prediction files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from tests.helpers import tiny_config
from tunelab.eval.compare import summarize, validation_evidence
from tunelab.eval.evaluate import answer_scores, read_predictions, write_predictions
from tunelab.recipes.run import _report, run_training


def _predictions(run_dir: Path, name: str, answers: list[str]) -> dict[str, float]:
    rows = [{"origin": f"val.jsonl:{k}", "prompt": f"q{k}", "reference": "2021-03-05", "prediction": a}
            for k, a in enumerate(answers)]  # fmt: skip
    metrics = answer_scores(rows)
    write_predictions(rows, run_dir / name)
    return metrics


def test_before_after_table_and_eval_stats(tmp_path: Path) -> None:
    base = _predictions(tmp_path, "predictions_base.jsonl", ["2021-03-05"] * 3 + ["05.03.2021"] * 27)
    tuned = _predictions(tmp_path, "predictions.jsonl", ["2021-03-05"] * 28 + ["2021-3-5"] * 2)
    console = Console(file=io.StringIO(), width=160, color_system=None)
    _report(console, tmp_path, {"val_loss": 2.0, **base}, {"val_loss": 1.0, "steps": 9, **tuned}, samples=0)
    text = console.file.getvalue()
    assert "Validation before and after training (30 examples)" in text
    exact = next(line for line in text.splitlines() if line.startswith("│ exact_match"))
    assert "10.0% [" in exact and "93.3% [" in exact and "<0.001" in exact and "n.s." not in exact
    stats = json.loads((tmp_path / "eval_stats.json").read_text())
    assert stats["columns"] == ["base", "tuned"] and stats["paired"]
    assert stats["tests"]["exact_match"]["discordant"] == [0, 25]  # 25 rows right only after training
    assert "steps" not in stats["values"]["tuned"] and "val_loss" not in stats["tests"]


def test_validation_metrics_get_ratio_intervals_and_a_paired_test(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, "training.epochs=2", "eval.generate=false")
    run = run_training(cfg, console=Console(file=io.StringIO()))
    base_rows = read_predictions(run.run_dir / "validation_rows_base.jsonl")
    rows = read_predictions(run.run_dir / "validation_rows.jsonl")
    assert len(rows) == len(base_rows) == 16  # 10% of 160 rows held out, one line each, in data order
    assert [r["count"] for r in rows] == [r["count"] for r in base_rows]
    # The rows' sums give the reported ratios back.
    loss, count, right = (sum(r[k] for r in rows) for k in ("loss", "count", "correct"))
    assert run.final["val_loss"] == pytest.approx(loss / count, rel=1e-5)
    assert run.final["val_token_acc"] == pytest.approx(right / count, rel=1e-5)
    stats = json.loads((run.run_dir / "eval_stats.json").read_text())
    for column in ("base", "tuned"):
        for metric in ("val_loss", "val_ppl", "val_token_acc"):
            interval = stats["intervals"][column][metric]
            assert interval["low"] <= stats["values"][column][metric] <= interval["high"]
    assert stats["intervals"]["tuned"]["val_loss"]["high"] < stats["intervals"]["base"]["val_loss"]["low"]
    test = stats["tests"]["val_loss"]
    assert test["test"] == "paired bootstrap" and test["delta"]["high"] < 0 and test["significant"]


def test_a_ratio_is_given_only_when_the_rows_reproduce_it() -> None:
    rows = [{"loss": 2.0, "count": 1, "correct": 1}, {"loss": 6.0, "count": 3, "correct": 0}]
    found = validation_evidence("val_loss", 2.0, rows)  # (2 + 6) / (1 + 3)
    assert found is not None and found.n == 2
    assert found.statistic is not None and found.statistic(np.array([1, 1])) == pytest.approx(2.0)  # row 2 twice
    assert validation_evidence("val_token_acc", 0.25, rows) is not None  # 1 / 4
    assert validation_evidence("val_reward_margin", 0.7, rows) is None  # not a ratio of these sums
    assert validation_evidence("val_loss/dates", 2.0, rows) is None  # a task's own rows are not these
    summary = summarize({"a": ({"val_loss": 2.0}, [])}, validation={"a": rows})
    assert summary.intervals["a"]["val_loss"].low <= 2.0 <= summary.intervals["a"]["val_loss"].high
