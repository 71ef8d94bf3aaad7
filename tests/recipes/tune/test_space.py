"""The tune: section: distributions, their check against the config's own fields (unknown keys with a
did-you-mean, types and bounds, keys of another method), the default space, conditional method keys and the
trial config built from drawn values; durations; `tunelab validate` checks the section."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from tunelab.cli.main import main
from tunelab.config import load_config
from tunelab.core.duration import seconds
from tunelab.core.errors import ConfigError
from tunelab.recipes.tune.space import default_space, search_space, suggest, trial_config
from tunelab.recipes.tune.study import make_plan, make_pruner

BASE = ["data.train=x.jsonl"]


def tune_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*BASE, *overrides])
    return str(info.value)


def space(params: str) -> str:
    return f"tune.params={params}"


def test_distribution_shapes_are_checked() -> None:
    assert "swap them" in tune_error(space('{"training.epochs": {"type": "int", "low": 3, "high": 1}}'))
    assert "above 0" in tune_error(space('{"training.learning_rate": {"type": "loguniform", "low": 0, "high": 1}}'))
    assert "whole-number" in tune_error(space('{"training.epochs": {"type": "int", "low": 1.5, "high": 3}}'))
    assert "non-empty" in tune_error(space('{"method.name": {"type": "categorical", "choices": []}}'))
    assert "needs both" in tune_error(space('{"training.epochs": {"type": "int", "low": 1}}'))
    ok = load_config(None, [*BASE, space('{"method.r": {"type": "int", "low": 4, "high": 64, "log": true}}')])
    assert ok.tune is not None and ok.tune.params["method.r"].log


def test_unknown_key_names_line_and_closest_key(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(
        "data:\n  train: x.jsonl\ntune:\n  params:\n    training.learning_rat:\n      type: loguniform\n"
        "      low: 1.0e-5\n      high: 1.0e-2\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert f"{config}:5" in message and "unknown key 'training.learning_rat'" in message
    assert "Did you mean 'training.learning_rate'?" in message


def test_values_must_fit_the_fields_type_and_bounds() -> None:
    negative = tune_error(space('{"training.learning_rate": {"type": "uniform", "low": -0.1, "high": 0.01}}'))
    assert "tune.params.training.learning_rate" in negative and "greater than 0" in negative
    literal = tune_error(space('{"training.scheduler": {"type": "int", "low": 1, "high": 3}}'))
    assert "training.scheduler" in literal and "'cosine'" in literal
    fractional = tune_error(space('{"training.epochs": {"type": "uniform", "low": 1, "high": 4}}'))
    assert "fractional" in fractional
    bounded = tune_error(space('{"training.warmup_ratio": {"type": "uniform", "low": 0, "high": 1}}'))
    assert "less than 1" in bounded
    choice = tune_error(space('{"method.name": {"type": "categorical", "choices": ["lora", "lorra"]}}'))
    assert "Did you mean 'lora'?" in choice
    other = tune_error(space('{"method.num_virtual_tokens": {"type": "int", "low": 4, "high": 8}}'))
    assert "not a key of method 'lora'" in other and "prefix" in other
    assert "is a section" in tune_error(space('{"training.adversarial": {"type": "categorical", "choices": [null]}}'))
    assert "cannot be tuned" in tune_error(space('{"output.name": {"type": "categorical", "choices": ["a"]}}'))
    enqueued = tune_error(space('{"training.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-2}}'),
                          'tune.enqueue=[{"training.learning_rate": -1}]')  # fmt: skip
    assert "tune.enqueue.0.training.learning_rate" in enqueued
    # A value must fit every method that can be drawn with it: ia3's target_modules is a list only.
    mixed = tune_error(space(json.dumps({
        "method.name": {"type": "categorical", "choices": ["lora", "ia3"]},
        "method.target_modules": {"type": "categorical", "choices": ["all-linear"]},
    })))  # fmt: skip
    assert "method.target_modules" in mixed and "valid list" in mixed
    # The method's own keys are reachable once method.name ranges over methods that have them.
    params = {"method.num_virtual_tokens": {"type": "int", "low": 4, "high": 8},
              "method.r": {"type": "int", "low": 2, "high": 8},
              "method.name": {"type": "categorical", "choices": ["lora", "prefix"]}}  # fmt: skip
    both = load_config(None, [*BASE, space(json.dumps(params))])
    assert next(iter(search_space(both))) == "method.name"  # the tag is drawn first


def test_default_space_follows_the_method() -> None:
    lora = default_space(load_config(None, [*BASE, "tune.trials=4"]))
    assert {"training.learning_rate", "training.epochs", "method.r", "method.alpha", "method.dropout"} <= set(lora)
    full = default_space(load_config(None, [*BASE, "method.name=full", "training.max_steps=10"]))
    assert "method.r" not in full and "training.epochs" not in full
    assert (full["training.learning_rate"].high or 1) < (lora["training.learning_rate"].high or 0)
    cfg = load_config(None, [*BASE, "tune.trials=4"])
    assert search_space(cfg).keys() == lora.keys()  # tune: naming only a budget searches the default space


def test_method_keys_are_drawn_only_for_methods_that_have_them(tmp_path: Path) -> None:
    cfg = load_config(None, [*BASE, "method.r=8", space(
        '{"method.name": {"type": "categorical", "choices": ["lora", "ia3"]}, "method.r": {"type": "int", "low": 2,'
        ' "high": 8}, "method.target_modules": {"type": "categorical", "choices": [["q_proj", "v_proj"], ["v_proj"]]}}'
    )])  # fmt: skip
    params = search_space(cfg)
    ia3 = suggest(optuna.trial.FixedTrial({"method.name": "ia3", "method.target_modules": '["q_proj", "v_proj"]'}),
                  params, cfg)  # fmt: skip
    assert ia3 == {"method.name": "ia3", "method.target_modules": ["q_proj", "v_proj"]}
    lora = suggest(optuna.trial.FixedTrial({"method.name": "lora", "method.r": 3, "method.target_modules":
                                            '["v_proj"]'}), params, cfg)  # fmt: skip
    assert lora["method.r"] == 3
    run = trial_config(cfg, ia3, out_dir=tmp_path, name="trial-0000", baseline=False)
    assert run.method.name == "ia3" and not hasattr(run.method, "r")  # lora's r was dropped, not carried over
    assert run.tune is None and run.output.name == "trial-0000" and run.eval.baseline is False
    assert trial_config(cfg, lora, out_dir=tmp_path, name="t").method.r == 3  # pyright: ignore[reportAttributeAccessIssue]


def test_durations() -> None:
    assert seconds("2h") == 7200 and seconds("1h30m") == 5400 and seconds("90s") == 90 and seconds("3600") == 3600
    assert load_config(None, [*BASE, "training.max_time=45m"]).training.max_time == 2700
    assert load_config(None, [*BASE, "tune.timeout=1.5h"]).tune.timeout == 5400  # pyright: ignore[reportOptionalMemberAccess]
    assert "not a duration" in tune_error("training.max_time=2 hours")


def test_validate_checks_the_tune_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    config = tmp_path / "study.yaml"
    tune = {"params": {"training.scheduler": {"type": "int", "low": 1, "high": 3}}}
    config.write_text(yaml.safe_dump({"data": {"train": "x.jsonl"}, "tune": tune}))
    assert main(["validate", str(config)]) == 2
    assert "tune.params.training.scheduler" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"data": {"train": "x.jsonl"}, "tune": {"trials": 3}}))
    assert main(["validate", str(config)]) == 0


def test_plan_directions_and_pruners() -> None:
    def plan_of(*overrides: str):
        cfg = load_config(None, [*BASE, *overrides])
        return cfg, make_plan(cfg, None, search_space(cfg))

    cfg, plan = plan_of("tune.metric=exact_match")
    assert plan.directions == ["maximize"] and plan.prune_on == "val_loss" and plan.prune_sign == -1.0
    assert isinstance(make_pruner(cfg.tune, plan), optuna.pruners.MedianPruner)  # pyright: ignore[reportArgumentType]
    cfg, plan = plan_of("tune.metric=val_loss", "tune.pruner=hyperband", "output.dir=/tmp/x", "tune.study=s")
    assert plan.prune_sign == 1.0 and plan.storage == "sqlite:////tmp/x/s/study.db"
    assert isinstance(make_pruner(cfg.tune, plan), optuna.pruners.HyperbandPruner)  # pyright: ignore[reportArgumentType]
    cfg, plan = plan_of("tune.pruner=successive_halving")
    assert isinstance(make_pruner(cfg.tune, plan), optuna.pruners.SuccessiveHalvingPruner)  # pyright: ignore[reportArgumentType]
    cfg, plan = plan_of("tune.metric=[exact_match, train_seconds]")
    assert plan.directions == ["maximize", "minimize"] and plan.prune_on is None  # auto: no pruning for two
    with pytest.raises(ConfigError, match="prunes single-metric studies only"):
        plan_of("tune.metric=[exact_match, train_seconds]", "tune.pruner=median")
    with pytest.raises(ConfigError, match="one direction per metric"):
        plan_of("tune.metric=[exact_match, train_seconds]", "tune.direction=[maximize]")
