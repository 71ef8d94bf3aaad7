"""The search space of a study: the default one, drawing a trial's values, and the trial's config built from them.

Keys are dotted config paths; a trial's config is the study's config with the drawn values put in and validated
like any config. The name of a tagged section (`method.name`) is drawn first, so a method's own keys (`method.r`)
are drawn only for the methods that have them (Optuna's define-by-run space: a key a trial does not use is not a
parameter of that trial).

The default space (`tune:` without `params`), for a config that names only its budget:

| key | range |
|---|---|
| training.learning_rate | loguniform 5e-5 .. 5e-3 for adapters (lora, dora, ia3, ...); 1e-6 .. 2e-4 for full, freeze |
| training.epochs | int 1 .. 4 (left out when training.max_steps is set) |
| training.warmup_ratio | uniform 0 .. 0.1 |
| training.weight_decay | uniform 0 .. 0.1 |
| method.r | int 4 .. 64, log scale (LoRA-like methods) |
| method.alpha | categorical 8, 16, 32, 64 (LoRA-like methods) |
| method.dropout | uniform 0 .. 0.2 (LoRA-like methods) |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from tunelab.config import TAGGED, TunelabConfig
from tunelab.core.errors import ConfigError
from tunelab.core.schema import explain
from tunelab.tune_config import Distribution, Target, resolve

_PRIMITIVE = (type(None), bool, int, float, str)
_FULL_WEIGHTS = ("full", "freeze")
"""Methods that change the model's own weights, which want much smaller learning rates than adapters."""


def default_space(cfg: TunelabConfig) -> dict[str, Distribution]:
    """The space a `tune:` section without `params` searches (the module docstring's table)."""
    low, high = (1e-6, 2e-4) if cfg.method.name in _FULL_WEIGHTS else (5e-5, 5e-3)
    space = {"training.learning_rate": Distribution(type="loguniform", low=low, high=high)}
    if cfg.training.max_steps is None:
        space["training.epochs"] = Distribution(type="int", low=1, high=4)
    space["training.warmup_ratio"] = Distribution(type="uniform", low=0.0, high=0.1)
    space["training.weight_decay"] = Distribution(type="uniform", low=0.0, high=0.1)
    fields = type(cfg.method).model_fields
    if {"r", "alpha", "dropout"} <= set(fields):
        space["method.r"] = Distribution(type="int", low=4, high=64, log=True)
        space["method.alpha"] = Distribution(type="categorical", choices=[8, 16, 32, 64])
        space["method.dropout"] = Distribution(type="uniform", low=0.0, high=0.2)
    return space


def search_space(cfg: TunelabConfig) -> dict[str, Distribution]:
    """The study's space: `tune.params`, or the default space; tagged sections' names first."""
    params = cfg.tune.params if cfg.tune is not None and cfg.tune.params else default_space(cfg)
    return dict(sorted(params.items(), key=lambda kv: not _is_tag(kv[0])))


def suggest(trial: optuna.Trial, space: Mapping[str, Distribution], cfg: TunelabConfig) -> dict[str, Any]:
    """Draw one trial's values from `space`: {dotted key: value}, leaving out the keys that the drawn method (or
    objective) does not have."""
    names = {"method": [cfg.method.name], "objective": [cfg.objective.name]}
    values: dict[str, Any] = {}
    for path, dist in space.items():
        if not _is_tag(path) and not isinstance(resolve(TunelabConfig, path, TAGGED, names), Target):
            continue  # a key of another method than the one drawn
        values[path] = _draw(trial, path, dist)
        if _is_tag(path):
            names[path.split(".")[0]] = [str(values[path])]
    return values


def _draw(trial: optuna.Trial, path: str, dist: Distribution) -> Any:
    if dist.type == "categorical":
        choices = list(dist.choices or [])
        if all(isinstance(c, _PRIMITIVE) for c in choices):
            return trial.suggest_categorical(path, choices)
        # Optuna stores only plain values as choices: lists and mappings are drawn as their JSON text.
        return json.loads(trial.suggest_categorical(path, [json.dumps(c) for c in choices]))
    low, high = float(dist.low or 0), float(dist.high or 0)
    if dist.type == "int":
        step = int(dist.step or 1)
        return trial.suggest_int(path, int(low), int(high), step=step, log=dist.log)
    return trial.suggest_float(path, low, high, log=dist.type == "loguniform", step=dist.step)


def trial_config(
    cfg: TunelabConfig, values: Mapping[str, Any], *, out_dir: Path, name: str, baseline: bool | None = None
) -> TunelabConfig:
    """`cfg` with `values` (dotted keys) put in, without its `tune:` section, writing to `out_dir/name`; a drawn
    method or objective name keeps only the keys the new section has. `baseline` overrides eval.baseline."""
    raw = cfg.model_dump(mode="json", by_alias=True)
    raw.pop("tune", None)
    for path, value in sorted(values.items(), key=lambda kv: not _is_tag(kv[0])):
        _put(raw, path, value)
    raw["output"] = {**raw["output"], "dir": str(out_dir), "name": name, "overwrite": True}
    if baseline is not None:
        raw["eval"]["baseline"] = baseline
    try:
        return TunelabConfig.model_validate(raw)
    except ValidationError as exc:  # a combination the sections' own checks refuse (nesterov without momentum)
        problems = explain(exc, "the trial's values", {}, TunelabConfig, TAGGED)
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ConfigError(f"The values {shown} make an invalid config: " + " ".join(problems)) from None


def _put(raw: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    section = parts[0]
    if _is_tag(path) and node.get("name") != value:
        # Another method (or objective): keep only the keys its own section has.
        fields = TAGGED[section].choices[str(value)].model_fields
        keys = {f.alias or n for n, f in fields.items()} | set(fields)
        raw[section] = {k: v for k, v in node.items() if k in keys}
        node = raw[section]
    node[parts[-1]] = value


def _is_tag(path: str) -> bool:
    """Whether `path` names a tagged section's choice (`method.name`, `objective.name`)."""
    parts = path.split(".")
    return len(parts) == 2 and parts[0] in TAGGED and parts[1] == "name"
