"""The run configuration: pydantic models with a docstring per field, loaded from YAML plus dotted overrides.

Unknown keys and bad values become one `ConfigError` that names the key (and its line in the file), says what
is wrong and suggests the closest valid key. Every field has a default except `data.train`, so a config that
names only the training data is a complete config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from tunelab.core import safe_yaml
from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section, TaggedUnion, explain, read_yaml_mapping
from tunelab.data.config import DataSection
from tunelab.eval.config import EvalSection
from tunelab.methods.registry import METHOD_CONFIGS, MethodConfig
from tunelab.models.config import ModelSection
from tunelab.objectives.registry import OBJECTIVE_CONFIGS, ObjectiveConfig
from tunelab.train.config import TrainingSection
from tunelab.tune_config import TuneSection, space_problems

# The method and objective unions are built at run time from the registries: pyright sees variables, not types;
# pydantic reads them fine. Every section names them through these two aliases.
_MethodField: TypeAlias = Annotated[
    MethodConfig,  # pyright: ignore[reportInvalidTypeForm] - a Union built at run time
    Field(discriminator="name"),
]
_ObjectiveField: TypeAlias = Annotated[
    ObjectiveConfig,  # pyright: ignore[reportInvalidTypeForm] - a Union built at run time
    Field(discriminator="name"),
]


class OutputSection(Section):
    dir: str = "runs"
    """Folder that holds run folders."""
    name: str | None = None
    """Run folder name; default: the config file's name."""
    overwrite: bool = False
    """Replace an existing run folder of the same name instead of stopping."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = []
    """Experiment trackers that receive the resolved config, every metrics.jsonl line, the data report and the
    evaluations (MLflow also the trained adapter/model and reports as artifacts). Checked before training starts."""
    tensorboard_dir: str | None = None
    """TensorBoard log folder; default `<run folder>/tensorboard`."""
    mlflow_tracking_uri: str | None = None
    """MLflow store: `sqlite:///path.db`, a folder (`file:///...`) or a server (`http://host:5000`); default
    `sqlite:///<output.dir>/mlflow.db`, shared by the runs of that folder."""
    mlflow_experiment: str = "tunelab"
    """MLflow experiment the run is logged under (created when missing)."""
    mlflow_log_model: bool = True
    """Upload the trained adapter/model folder to MLflow as an artifact (a full fine-tune copies the whole model)."""
    wandb_project: str = "tunelab"
    """Weights & Biases project."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """`offline` writes the run under `<run folder>/wandb` (upload later with `wandb sync`); `online` needs a
    login and the network."""
    trackio_project: str = "tunelab"
    """trackio project; trackio keeps it in its own local store (the `TRACKIO_DIR` environment variable)."""


class ReplaySection(Section):
    fraction: float = Field(default=0.2, gt=0, lt=1)
    """Share of each later stage's training rows that are replayed from earlier stages (0.2: one replayed row
    for every four new ones). Capped by what the buffer holds: rows are not repeated."""
    buffer_size: int = Field(default=500, ge=1)
    """Rows the reservoir buffer keeps of all earlier stages' training data (a uniform sample, Algorithm R).
    It is stored in the run folder (`replay_buffer.json`), so a later run continues it."""
    seed: int = 0
    """Seed of the reservoir and of the rows drawn from it."""


class EWCSection(Section):
    # `lambda` is a Python keyword: the field is `lam`, and a written-out config (which uses `lam`) reads back.
    model_config = Section.model_config | ConfigDict(populate_by_name=True)

    lam: float = Field(default=1000.0, gt=0, alias="lambda")
    """λ of the penalty λ/2 · Σ F (θ - θ*)². The Fisher is of the per-token loss, so its entries are small:
    values of 10²-10⁵ are typical."""
    fisher_samples: int = Field(default=64, ge=1)
    """Training examples of the finished stage whose squared gradients (one example at a time) make the
    diagonal Fisher. Summed over stages (online EWC) and saved as `<stage>/ewc.safetensors`."""


class ContinualSection(Section):
    replay: ReplaySection | None = None
    """Experience replay: mix earlier stages' rows (a reservoir buffer) into each later stage; off when null."""
    ewc: EWCSection | None = None
    """Elastic weight consolidation: after each stage estimate the diagonal Fisher, and penalise later stages
    for moving the weights it marks as important; off when null."""
    lora_per_task: bool = False
    """Train a fresh adapter per stage on the frozen base (never merged), saved as `<stage>/adapter`; at
    inference the task tag picks the adapter (routing), so earlier tasks cannot be forgotten — but a prompt
    must come with its task."""
    eval_examples: int | None = Field(default=100, ge=1)
    """Validation examples per task answered (greedy, exact match) after every stage; null: all of them."""
    baseline: bool = False
    """Also score every task before the first stage (the starting model), which gives forward transfer."""


def _named_sections(raw: Any) -> Any:
    """`method: lora` is short for `method: {name: lora}` (likewise `objective: dpo`); a section without a name
    is the default (lora, sft)."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    for key, default in (("method", "lora"), ("objective", "sft")):
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
        if isinstance(raw.get(key), dict) and "name" not in raw[key]:
            raw[key] = {"name": default, **raw[key]}
    return raw


class StageSection(Section):
    """One stage of a multi-stage run. Sections it leaves out are the run's own; `data`, `training` and `eval`
    given here are merged key by key over the run's, `method` and `objective` replace the run's."""

    name: str
    """The stage's sub-folder of the run folder (default: stage-<k>-<objective>)."""
    data: DataSection
    objective: _ObjectiveField = Field(default_factory=lambda: OBJECTIVE_CONFIGS["sft"]())
    method: _MethodField = Field(default_factory=lambda: METHOD_CONFIGS["lora"]())
    training: TrainingSection = TrainingSection()
    eval: EvalSection = EvalSection()


class TunelabConfig(Section):
    """A whole run."""

    model: ModelSection = ModelSection()
    data: DataSection
    method: _MethodField = Field(default_factory=lambda: METHOD_CONFIGS["lora"]())
    objective: _ObjectiveField = Field(default_factory=lambda: OBJECTIVE_CONFIGS["sft"]())
    """What the loss is: sft, dpo, orpo, kto, reward, distill, ... (`objective: dpo` is short for {name: dpo})."""
    training: TrainingSection = TrainingSection()
    eval: EvalSection = EvalSection()
    output: OutputSection = OutputSection()
    continual: ContinualSection | None = None
    """Continual learning over `stages:` (one task each) or over successive runs (`model.source` = the previous
    continual run folder): replay, EWC or an adapter per task, and the task x stage accuracy matrix."""
    stages: list[StageSection] = []
    """Train in stages, each starting from the previous one's weights (e.g. pretrain on domain text, then sft):
    a list of sections like the run's own (data, objective, method, training, eval), inheriting what they omit."""
    tune: TuneSection | None = None
    """A hyperparameter study over this config (`tunelab tune`): search space, metric, pruner, storage."""

    @model_validator(mode="before")
    @classmethod
    def _shorthands_and_stages(cls, raw: Any) -> Any:
        raw = _named_sections(raw)
        if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
            return raw
        if "data" not in raw and raw["stages"] and isinstance(raw["stages"][0], dict):
            raw["data"] = raw["stages"][0].get("data")  # every stage names its data: the first one's is the run's
        stages = []
        for k, stage in enumerate(raw["stages"]):
            if not isinstance(stage, dict):
                stages.append(stage)
                continue
            stage = _named_sections(stage)
            named = [key for key in ("method", "objective") if key in stage or key in raw]
            merged = {key: stage[key] if key in stage else raw[key] for key in named}
            for key in ("data", "training", "eval"):
                base, own = raw.get(key) or {}, stage.get(key) or {}
                merged[key] = {**base, **own} if isinstance(base, dict) and isinstance(own, dict) else own or base
            objective = (merged.get("objective") or {}).get("name", "sft")
            stages.append({"name": f"stage-{k + 1}-{objective}", **stage, **merged})
        return {**raw, "stages": stages}


def load_config(path: str | Path | None, overrides: Sequence[str] = (), base: dict | None = None) -> TunelabConfig:
    """Read a YAML config, apply `key.sub=value` overrides and validate.

    Relative data paths in the file (data files, `data.cache_dir`) are resolved against the file's folder; paths
    given in overrides against the current folder.
    """
    raw: dict[str, Any] = dict(base or {})
    lines: dict[str, int] = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist. Check the path.")
        loaded, lines = read_yaml_mapping(path, "sections: model, data, method, ...")
        raw.update(loaded)
        _resolve_data_paths(raw, path.parent)
    for item in overrides:
        _apply_override(raw, item)
    try:
        cfg = TunelabConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where, lines)) from None
    if cfg.tune is not None:
        _check_space(cfg.tune, cfg, where, lines)
    return cfg


def dump_config(cfg: TunelabConfig) -> str:
    """The resolved config as YAML (every default written out), for the run folder."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override '{item}' must look like 'section.key=value', e.g. training.learning_rate=1e-4.")
    node: dict[str, Any] = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in ("method", "objective"):
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = safe_yaml.load(value, f"override '{item}'")[0] if value.strip() else None


def _resolve_data_paths(raw: dict[str, Any], folder: Path) -> None:
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict):
            _resolve_data_paths(stage, folder)
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for key in ("train", "validation"):
        value = data.get(key)
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            data[key] = [str(folder / v) if isinstance(v, str) and not Path(v).is_absolute() else v for v in value]
    cache_dir = data.get("cache_dir")
    if isinstance(cache_dir, str) and cache_dir and not Path(cache_dir).expanduser().is_absolute():
        data["cache_dir"] = str(folder / cache_dir)


# Sections that are a union tagged by `name`: what one is called, and the registry of its configs.
TAGGED = {
    "method": TaggedUnion("a method", METHOD_CONFIGS),
    "objective": TaggedUnion("an objective", OBJECTIVE_CONFIGS),
}


def _check_space(tune: TuneSection, cfg: TunelabConfig, where: str, lines: dict[str, int]) -> None:
    """Every key of the `tune:` search space names a config field, and its distribution fits the field."""
    names = {"method": cfg.method.name, "objective": cfg.objective.name}
    problems = []
    for key, problem in space_problems(tune, TunelabConfig, TAGGED, names):
        line = lines.get(key)
        problems.append(f"{where}:{line}: {key}: {problem}" if line else f"{where}: {key}: {problem}")
    if problems:
        head = "The tune: section has " + ("a problem" if len(problems) == 1 else f"{len(problems)} problems")
        raise ConfigError(f"{head}: " + " ".join(problems) + " Fix the search space and run `tunelab validate` again.")


def _explain(exc: ValidationError, where: str, lines: dict[str, int]) -> str:
    problems = explain(exc, where, lines, TunelabConfig, TAGGED)
    head = "The config has a problem" if len(problems) == 1 else f"The config has {len(problems)} problems"
    return (
        f"{head}: " + " ".join(problems) + " Fix the config (or the --set override) and run `tunelab validate` again."
    )
