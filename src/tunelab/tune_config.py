"""The `tune:` section (a hyperparameter study over the rest of the config) and the check of its search space
against the run config's own schema.

Each key of `tune.params` is a dotted config path (`training.learning_rate`, `method.r`) with a distribution.
The check walks the config's models to the field each path names and validates the distribution's values with
that field's own type and bounds, so a negative learning-rate range or an `int` distribution for a choice field is
refused before anything trains. It lives below `tunelab.config`, which composes the whole run model and calls it
from `load_config` (the problems name the YAML line).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo

from tunelab.core.duration import Duration
from tunelab.core.errors import did_you_mean
from tunelab.core.schema import Section, TaggedUnion

Direction = Literal["auto", "minimize", "maximize"]


class Distribution(Section):
    """One key's search range: `{type: loguniform, low: 1e-5, high: 1e-2}`, `{type: int, low: 4, high: 64, log:
    true}`, `{type: categorical, choices: [lora, dora]}`."""

    type: Literal["loguniform", "uniform", "int", "categorical"]
    """`loguniform`: a float drawn evenly on a log scale; `uniform`: a float; `int`: an integer (with `step` and
    `log`); `categorical`: one of `choices` (any YAML values)."""
    low: float | None = None
    """Smallest value (loguniform, uniform, int)."""
    high: float | None = None
    """Largest value, included (loguniform, uniform, int)."""
    step: float | None = Field(default=None, gt=0)
    """Spacing of the values (uniform, int): low, low + step, ..."""
    log: bool = False
    """Draw `int` values evenly on a log scale (needs low >= 1)."""
    choices: list[Any] | None = None
    """The values of a `categorical` key."""

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical distribution needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical distribution takes `choices`, not `low`/`high`")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} distribution takes `low` and `high`, not `choices`")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} distribution needs both `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g}): swap them")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range must be above 0 (low is {self.low:g}); use uniform for ranges from 0")
        if self.type == "int":
            if not (float(self.low).is_integer() and float(self.high).is_integer()):
                raise ValueError("an int distribution needs whole-number low and high")
            if self.step is not None and not float(self.step).is_integer():
                raise ValueError("an int distribution needs a whole-number step")
            if self.log and (self.low < 1 or (self.step or 1) != 1):
                raise ValueError("an int distribution with log: true needs low >= 1 and no step")
        elif self.log:
            raise ValueError("`log` is for int distributions; use type: loguniform for floats")
        if self.type == "loguniform" and self.step is not None:
            raise ValueError("a loguniform distribution takes no step")
        return self

    def probes(self) -> list[Any]:
        """Values whose validity stands for the whole range: the ends, and for floats a non-integer inside (a float
        range for an integer field fails on it)."""
        if self.type == "categorical":
            return list(self.choices or [])
        low, high = float(self.low or 0), float(self.high or 0)
        if self.type == "int":
            return [int(low), int(high)]
        inside = low + (high - low) * 0.371 if high > low else low
        return [low, high, inside]


class TuneSection(Section):
    """A hyperparameter study: `tunelab tune CONFIG` trains the config many times, each trial with values drawn
    from `params`, and keeps the best (`runs/<study>/best.yaml`). `tunelab train` ignores this section."""

    params: dict[str, Distribution] = {}
    """Search space: dotted config keys (`training.learning_rate`, `method.r`, `method.name`) with a distribution
    each. Empty: the default space (learning rate, epochs, warmup, weight decay, and LoRA's r, alpha and dropout
    for LoRA-like methods). A method key is drawn only for the methods that have it (`method.r` when
    `method.name` is lora, dora or qlora)."""
    trials: int = Field(default=20, ge=1)
    """Trials the study finishes (completed or pruned) over all its workers and restarts."""
    timeout: Duration | None = Field(default=None, gt=0)
    """Start no new trial after this long (seconds, or text such as "2h")."""
    metric: str | list[str] = "val_loss"
    """What a trial is judged by: a metric of the run's final evaluation (`val_loss`, `val_token_acc`,
    `exact_match`, `token_f1`, `accuracy`, `macro_f1`, ...) or `train_seconds` / `trainable_params`. Several: a
    multi-objective study, whose result is its Pareto front."""
    direction: Direction | list[Direction] = "auto"
    """`minimize` or `maximize`, one per metric; `auto`: minimize losses, perplexities, seconds and parameter
    counts, maximize everything else."""
    pruner: Literal["auto", "none", "median", "successive_halving", "hyperband"] = "auto"
    """Stop trials whose validation curve is worse than the others' (`auto`: median for one metric, none for
    several: Optuna cannot prune multi-objective studies). Trials report at every evaluation
    (`training.eval_every`, and the end of each epoch)."""
    prune_on: str | None = None
    """The validation metric the loop reports during training that pruning compares (`val_loss`, `val_ppl`,
    `val_token_acc`); default: the study's metric when the loop computes it, otherwise `val_loss`."""
    startup_trials: int = Field(default=2, ge=0)
    """Trials drawn at random before the sampler models the results, and before the median pruner prunes."""
    warmup_steps: int = Field(default=0, ge=0)
    """Steps of each trial that are never pruned."""
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    """`tpe` (Optuna's default, also multi-objective), `random`, or `nsga2` (multi-objective genetic search)."""
    seed: int = 0
    """Seed of the sampler."""
    study: str | None = None
    """Study name and folder (`<output.dir>/<study>/`); default: the config file's name."""
    storage: str | None = None
    """SQLAlchemy URL of the study database; default: a SQLite file `study.db` in the study folder. A shared
    database (`postgresql+psycopg://user:pw@host/db`, `mysql+pymysql://...`) lets workers on several machines
    run one study."""
    workers: int = Field(default=1, ge=1)
    """Worker processes on this machine (each takes its share of the CPU threads)."""
    heartbeat: int = Field(default=20, ge=1)
    """Seconds between a running trial's heartbeats; a trial silent for 3 heartbeats (its worker was killed) is
    marked failed and run again."""
    retries: int = Field(default=2, ge=0)
    """How often a trial whose worker died is run again."""
    enqueue: list[dict[str, Any]] = []
    """Trials to run first, as values by dotted key (e.g. the hand-tuned settings); keys left out are drawn."""


@dataclass(frozen=True)
class Target:
    """Where a dotted key of the space lands: the field in each section it can be in."""

    path: str
    fields: list[FieldInfo]
    tag_choices: list[str] | None = None
    """For the name of a tagged section (`method.name`): the valid names."""


def resolve(
    root: type[BaseModel], path: str, tagged: Mapping[str, TaggedUnion], chosen: Mapping[str, Sequence[str]]
) -> Target | str:
    """The field(s) `path` names in `root` (a tagged section such as `method` is each of the `chosen` names'
    sections), or a sentence saying why it names none."""
    parts = path.split(".")
    if parts[0] in ("output", "tune", "stages", "continual"):
        return f"'{path}' cannot be tuned: a study sets output per trial, and tunes one run (not stages or tune:)."
    union = tagged.get(parts[0])
    if union is not None and len(parts) == 1:
        return f"'{path}' is a section, not a value: tune one of its keys ({path}.name chooses {union.what})."
    if union is not None:
        if parts[1:] == ["name"]:
            return Target(path, [], tag_choices=list(union.choices))
        sections = [union.choices[n] for n in chosen.get(parts[0], []) if n in union.choices]
        fields = [f for s in sections if isinstance(f := _walk(s, parts[1:]), FieldInfo)]
        if fields:
            return Target(path, fields)
        elsewhere = [n for n, s in union.choices.items() if isinstance(_walk(s, parts[1:]), FieldInfo)]
        if elsewhere:
            names = " or ".join(repr(n) for n in chosen.get(parts[0], []))
            return (
                f"'{path}' is not a key of {parts[0]} {names}, only of {', '.join(elsewhere)}: tune "
                f"{parts[0]}.name over those too, or drop the key."
            )
    found = _walk(root, parts, tagged)
    if isinstance(found, FieldInfo):
        return Target(path, [found])
    if found == "section":
        return f"'{path}' is a section, not a value: tune one of its keys."
    if found == "list":
        return f"'{path}' is inside a list, which a study cannot reach into: tune a key outside lists."
    return f"unknown key '{path}'.{did_you_mean(path, leaf_paths(root, tagged))}"


def space_problems(
    tune: TuneSection, root: type[BaseModel], tagged: Mapping[str, TaggedUnion], names: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(dotted key under `tune`, sentence) for every key of `tune.params` and `tune.enqueue` that does not fit the
    config `root`. `names` are the config's own names of its tagged sections (`{"method": "lora"}`); a tuned
    `method.name` widens them to its choices."""
    chosen = {key: [name] for key, name in names.items()}
    for key in tagged:
        dist = tune.params.get(f"{key}.name")
        if dist is not None and dist.type == "categorical":
            chosen[key] = [str(c) for c in dist.choices or []]
    problems: list[tuple[str, str]] = []
    for path, dist in tune.params.items():
        target = resolve(root, path, tagged, chosen)
        problem = target if isinstance(target, str) else check_distribution(target, dist)
        if problem is not None:
            problems.append((f"tune.params.{path}", problem))
    for i, values in enumerate(tune.enqueue):
        for path, value in values.items():
            dist = tune.params.get(path)
            if dist is None and tune.params:
                hint = did_you_mean(path, list(tune.params))
                problems.append((f"tune.enqueue.{i}.{path}", f"'{path}' is not a key of tune.params.{hint}"))
                continue
            target = resolve(root, path, tagged, chosen)
            if isinstance(target, str):
                problems.append((f"tune.enqueue.{i}.{path}", target))
                continue
            problem = check_distribution(target, Distribution(type="categorical", choices=[value]))
            if problem is not None:
                problems.append((f"tune.enqueue.{i}.{path}", problem))
    return problems


def check_distribution(target: Target, dist: Distribution) -> str | None:
    """Why the values of `dist` do not fit the field(s) of `target` (type and bounds), or None."""
    for value in dist.probes():
        if target.tag_choices is not None:
            if value not in target.tag_choices:
                names = ", ".join(target.tag_choices)
                hint = did_you_mean(str(value), target.tag_choices)
                return f"'{value}' is not a valid {target.path}.{hint} Valid: {names}."
            continue
        for info in target.fields:
            problem = check_value(info, value)
            if problem is not None:
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                which = "one of its choices" if dist.type == "categorical" else f"a value of the {dist.type} range"
                return f"{shown} ({which}) does not fit the field: {problem}"
    return None


def check_value(info: FieldInfo, value: Any) -> str | None:
    """Why `value` is not valid for the field `info` (its type and constraints), or None."""
    # A one-field model carries the field's type and its constraints (gt, ge, ...) exactly as the section does.
    kind: Any = info.annotation
    probe = create_model("Probe", value=(kind, info))
    try:
        probe.model_validate({"value": value})
    except ValidationError as exc:
        return "; ".join(e["msg"] for e in exc.errors()) + "."
    return None


def leaf_paths(root: type[BaseModel], tagged: Mapping[str, TaggedUnion] | None = None, prefix: str = "") -> list[str]:
    """Every dotted value key under `root` (tagged sections: the keys of all their choices), for did-you-mean."""
    out: list[str] = []
    for name, info in root.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        union = (tagged or {}).get(key)
        if union is not None:
            out += sorted({p for s in union.choices.values() for p in leaf_paths(s, None, key + ".")})
            continue
        model, in_list = _model_in(info.annotation)
        if model is None:
            out.append(key)
        elif not in_list:
            out += leaf_paths(model, None, key + ".")
    return out


def _walk(section: type[BaseModel], parts: Sequence[str], tagged: Mapping[str, TaggedUnion] | None = None) -> Any:
    """The FieldInfo at `parts` below `section`; "section" / "list" when it is one or inside one; None if absent."""
    info: FieldInfo | None = None
    current: type[BaseModel] | None = section
    for i, part in enumerate(parts):
        if current is None:
            return None
        fields = {f.alias or n: f for n, f in current.model_fields.items()} | current.model_fields
        info = fields.get(part)
        if info is None or (i == 0 and tagged and part in tagged):
            return None
        model, in_list = _model_in(info.annotation)
        if model is not None and in_list:
            return "list"
        current = model
    if current is not None:
        return "section"
    return info


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model inside a field's annotation (itself, `X | None`, `list[X]`), and whether it is in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    in_list = typing.get_origin(annotation) in (list, tuple, set)
    for arg in typing.get_args(annotation):
        found, nested = _model_in(arg)
        if found is not None:
            return found, in_list or nested
    return None, False
