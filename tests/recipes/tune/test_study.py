"""Studies on the tiny model: the report (trials.csv/.md, plots, best.yaml that trains to the best trial's
result), a pruner stopping a bad trial at its first evaluation, a multi-metric study's Pareto front, and the
refusals: another search space under an existing study's name (left as it was), an unreachable storage, a
metric the runs do not report."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import optuna
import pytest

from tests.recipes.tune.common import LR, study_config
from tunelab.cli.main import main
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.recipes.run import run_training
from tunelab.recipes.tune.run import prepare_study, run_study


def test_study_report_and_best_yaml_trains_to_the_best_result(tmp_path: Path, tiny_model_dir: Path) -> None:
    tune = {"study": "s", "trials": 3, "params": {"training.learning_rate": LR,
            "method.r": {"type": "int", "low": 2, "high": 8}}}  # fmt: skip
    cfg = load_config(study_config(tmp_path, tiny_model_dir, tune))
    result = run_study(cfg)
    folder = tmp_path / "runs" / "s"
    assert result.counts["complete"] == 3
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"complete"}
    assert {"val_loss", "training.learning_rate", "method.r", "seconds", "steps", "run"} <= set(rows[0])
    assert all((folder / r["run"] / "adapter").is_dir() for r in rows)  # each trial is a whole run folder
    assert "3 trials: 3 complete" in (folder / "trials.md").read_text()
    for plot in ("history.png", "parallel_coordinates.png", "importances.png"):
        assert (folder / plot).read_bytes()[:4] == b"\x89PNG", plot
    best = result.best[0]
    assert best.values[0] == min(float(r["val_loss"]) for r in rows)
    # best.yaml is a whole config: trained as it is, it gives the best trial's result again.
    again = run_training(load_config(folder / "best.yaml"))
    assert again.run_dir == tmp_path / "runs" / "s-best"
    assert again.final["val_loss"] == pytest.approx(best.values[0], rel=1e-4)


def test_median_pruner_stops_a_bad_trial_at_its_first_evaluation(tmp_path: Path, tiny_model_dir: Path) -> None:
    space = {"training.learning_rate": {"type": "loguniform", "low": 1e-8, "high": 3e-2}}
    # A good rate first, then one that cannot learn: the pruner compares it with the first trial's curve.
    tune = {"study": "p", "trials": 2, "params": space, "pruner": "median", "startup_trials": 1,
            "enqueue": [{"training.learning_rate": 3e-2}, {"training.learning_rate": 1e-8}]}  # fmt: skip
    result = run_study(load_config(study_config(tmp_path, tiny_model_dir, tune)))
    good, bad = result.study.get_trials()
    assert good.state == optuna.trial.TrialState.COMPLETE and bad.state == optuna.trial.TrialState.PRUNED
    full = good.user_attrs["steps"]
    assert bad.user_attrs["steps"] == 4 < full  # stopped at its first evaluation (eval_every 4)
    lines = [json.loads(x) for x in (tmp_path / "runs" / "p" / "trial-0001" / "metrics.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in lines) == 4  # it really trained no further
    assert result.counts["pruned"] == 1
    assert "1 pruned" in (tmp_path / "runs" / "p" / "trials.md").read_text()


def test_two_metrics_make_a_pareto_front(tmp_path: Path, tiny_model_dir: Path) -> None:
    tune = {"study": "m", "trials": 3, "metric": ["val_loss", "trainable_params"], "sampler": "random",
            "params": {"method.r": {"type": "int", "low": 1, "high": 16}}}  # fmt: skip
    result = run_study(load_config(study_config(tmp_path, tiny_model_dir, tune)))
    assert result.plan.directions == ["minimize", "minimize"] and result.plan.prune_on is None
    folder = tmp_path / "runs" / "m"
    assert (folder / "pareto_front.png").read_bytes()[:4] == b"\x89PNG"
    front = {t.number for t in result.best}
    assert front == {t.number for t in result.study.best_trials} and front
    assert "Pareto front: " in (folder / "trials.md").read_text()
    trials = result.study.get_trials()
    # r=1 has the fewest parameters; its count is LoRA's 2·r·(in+out) summed over the adapted layers.
    params = {t.params["method.r"]: t.values[1] for t in trials}
    assert all(params[a] < params[b] for a in params for b in params if a < b)


def test_another_space_under_an_existing_name_is_refused_and_the_study_kept(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = study_config(tmp_path, tiny_model_dir, {"study": "x", "trials": 1, "params": {"training.learning_rate": LR}})
    run_study(load_config(path))
    db = tmp_path / "runs" / "x" / "study.db"
    before = db.read_bytes()
    other = {"study": "x", "trials": 2, "params": {"method.r": {"type": "int", "low": 2, "high": 8}}}
    path = study_config(tmp_path, tiny_model_dir, other)
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already exists with another search space" in err and "method.r" in err and "--study" in err
    assert db.read_bytes() == before  # not one byte written
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from trials").fetchone() == (1,)


def test_unreachable_storage_and_unknown_metric(tmp_path: Path, tiny_model_dir: Path) -> None:
    url = "postgresql+psycopg://tuner:secret@127.0.0.1:1/studies"  # nothing listens on port 1
    tune = {"study": "u", "storage": url, "params": {"training.learning_rate": LR}}
    path = study_config(tmp_path, tiny_model_dir, tune)
    with pytest.raises(ConfigError) as info:
        prepare_study(load_config(path))
    message = str(info.value)
    assert "cannot be opened" in message and "127.0.0.1:1" in message and "secret" not in message
    with pytest.raises(ConfigError) as info:
        prepare_study(load_config(path, ["tune.storage=nosuchdb://x"]))
    assert "nosuchdb://x" in str(info.value)
    path = study_config(tmp_path, tiny_model_dir, {"study": "k", "trials": 1, "metric": "exact_macth"})
    with pytest.raises(ConfigError) as info:
        run_study(load_config(path))
    assert "exact_macth" in str(info.value) and "val_loss" in str(info.value)
