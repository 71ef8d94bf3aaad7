"""The run configuration: pydantic models with a docstring per field, loaded from YAML plus dotted overrides.

Unknown keys and bad values become one `ConfigError` that names the key (and its line in the file), says what
is wrong and suggests the closest valid key. Every field has a default except `data.train`, so a config that
names only the training data is a complete config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from tunelab.continual.config import ContinualSection
from tunelab.data.config import DataSection
from tunelab.errors import ConfigError, did_you_mean
from tunelab.methods import METHOD_CONFIGS, MethodConfig
from tunelab.objectives import OBJECTIVE_CONFIGS, ObjectiveConfig
from tunelab.regularizers.config import AdversarialSection
from tunelab.schema import Section, read_yaml_mapping


class ModelSection(Section):
    source: str = "smollm2-135m"
    """Embedded model name (`tunelab models`), a local Hugging Face folder, or a local `.gguf` file."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Storage dtype of frozen weights. `auto`: bf16 when training in bf16 and the method freezes the base."""


class TrainingSection(Section):
    epochs: int = Field(1, ge=1)
    """Passes over the training data (ignored when `max_steps` is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch on each device."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; the loss is normalised over all target tokens of the step."""
    micro_batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    """Run a micro-batch as pieces of at most this many (padded) tokens, each its own forward and backward, when
    the objective's loss is a sum over rows (sft, pretrain): the same gradient with a bounded activation memory.
    `auto`: 512 on a CPU (but two rows a piece at least), no splitting on accelerators; null: never split."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    optimizer: Literal["adamw", "adamw_8bit", "sgd", "adafactor", "lion"] = "adamw"
    """`adamw` (fused kernels where the device has them), `adamw_8bit` (bitsandbytes, CUDA only: 8-bit moments),
    `sgd` (with `momentum` / `nesterov`), `adafactor` (factored second moments: least optimizer memory), `lion`
    (sign updates, one moment; use a 3-10x smaller learning rate than AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay, applied to matrices only (not to norms or biases)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    lion_betas: tuple[float, float] = (0.9, 0.99)
    """Lion's betas: the first interpolates the update direction, the second is the momentum decay."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    nesterov: bool = False
    """SGD with Nesterov momentum (needs momentum > 0)."""
    layer_lr_decay: float | None = Field(None, gt=0, le=1)
    """Layer-wise learning-rate decay: transformer layer i of L trains at lr * decay^(L-1-i), the input
    embeddings at lr * decay^L; the final norm and output head at lr. Typical: 0.8-0.95."""
    head_lr: float | None = Field(None, gt=0)
    """Own learning rate for the output head (lm_head or a task head); with tied embeddings it is the
    embeddings' rate too."""
    embedding_lr: float | None = Field(None, gt=0)
    """Own learning rate for the input embeddings."""
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    """LoRA+: train the B matrices of LoRA/DoRA adapters at lr * ratio (the paper suggests 16)."""
    scheduler: Literal["cosine", "linear", "constant", "cosine_restarts", "polynomial", "inverse_sqrt", "wsd"] = (
        "cosine"
    )
    """Learning-rate shape after warmup: `cosine`/`linear` decay to `min_lr_ratio`; `cosine_restarts` runs
    `num_cycles` cosine decays back to back; `polynomial` decays as (1-progress)^`poly_power`; `inverse_sqrt`
    falls as sqrt(warmup/step); `wsd` (warmup-stable-decay) holds the peak, then decays linearly over the last
    `decay_ratio` of training; `constant` holds the peak."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Floor of the decaying schedules, as a fraction of the peak learning rate."""
    num_cycles: int = Field(1, ge=1)
    """Number of cosine cycles for `cosine_restarts`."""
    poly_power: float = Field(1.0, gt=0)
    """Exponent of the `polynomial` schedule (1 is linear)."""
    decay_ratio: float = Field(0.1, gt=0, le=1)
    """`wsd`: fraction of all steps spent in the final decay."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Warmup length as a fraction of all steps (`warmup_steps` wins when set)."""
    warmup_steps: int | None = Field(None, ge=0)
    """Warmup length in steps."""
    l1_penalty: float = Field(0.0, ge=0)
    """Add this times the L1 norm of the trained weights (`penalty_on`) to the loss; pushes updates to sparsity."""
    l2_penalty: float = Field(0.0, ge=0)
    """Add this times the squared L2 norm of the trained weights (`penalty_on`) to the loss."""
    penalty_on: Literal["delta", "weights"] = "delta"
    """What the L1/L2 penalties measure. `delta`: the change from the starting model (LoRA's s·B·A, IA3's scale
    minus 1, a bottleneck adapter's weights, or W - W0 for fully trained weights: L2-SP, which keeps a copy of
    them). `weights`: the trainable tensors themselves."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Spread this much of each target's probability over the whole vocabulary (or label set)."""
    neftune_alpha: float | None = Field(None, gt=0)
    """NEFTune: add uniform noise of scale alpha / sqrt(length * hidden) to input embeddings while training
    (the paper uses 5). Off when null."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Override every dropout probability of the model (attention, hidden, embedding) for training; null keeps
    the model's own."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; null disables clipping."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision. `auto`: bf16 autocast where the device supports it (trainable weights stay fp32)."""
    seed: int = 42
    """Seed for data order, splits, dropout and initialisation."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate validation loss every N steps (always at the end of each epoch and of training)."""
    save_every: int | None = Field(None, ge=1)
    """Write a resumable checkpoint every N steps (always at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without improving validation loss by `early_stopping_min_delta`."""
    early_stopping_min_delta: float = Field(0.0, ge=0)
    """Smallest validation-loss decrease that counts as an improvement."""
    log_every: int = Field(10, ge=1)
    """Write a metrics line every N steps."""
    group_by_length: bool = True
    """Batch examples of similar length together to cut padding (order stays random across batches)."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads for torch; default: all cores."""
    fused_modules: bool = True
    """Train Llama-family models with leaner RMSNorm and SwiGLU modules (same maths, fewer saved activations) and
    matrix-product causal attention for rows of up to 128 tokens (faster than the CPU flash kernel there)."""
    adversarial: AdversarialSection | None = None
    """Embedding-space adversarial training (fgm, pgd, freelb, smart) on top of the objective; off when null."""
    task_weights: dict[str, float] = {}
    """Multi-task loss weights by task tag (file stem, or a row's `task` field): each task's loss is multiplied
    by its weight; tasks left out weigh 1."""
    task_weighting: Literal["fixed", "uncertainty"] = "fixed"
    """`fixed`: `task_weights` as given. `uncertainty` (Kendall et al. 2018): per micro-batch,
    Σ_t exp(-s_t) L_t + s_t over the tasks present (L_t: the task's mean loss), one s_t per task learned with the
    model (on top of any `task_weights`)."""
    ewc_state: str | None = None
    """EWC: an `ewc.safetensors` file (or the folder holding one) with the Fisher and the weights of earlier
    tasks; the penalty ewc_lambda/2 · Σ F (θ - θ*)² is added to every step. `continual.ewc` sets it per stage."""
    ewc_lambda: float = Field(1000.0, gt=0)
    """λ of the EWC penalty (with `ewc_state`)."""
    max_bad_steps: int = Field(5, ge=1)
    """A step whose loss or gradient norm is NaN/inf is skipped (no update; counted as `skipped_steps` in the
    metrics); this many in a row stop the run with an error."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: much less activation
    memory for about a third more compute. Works with adapters (frozen base) and full training."""
    auto_batch_size: bool = False
    """Choose the micro-batch (`batch_size`) and `grad_accum` so that micro x accum x processes equals
    `global_batch_size`. On CUDA: the largest divisor that trains a step on the longest examples without running
    out of memory. On CPU nothing is run: an estimate of the activation memory must fit in half the available RAM
    (for a model without the usual config sizes, `batch_size` is the cap)."""
    global_batch_size: int | None = Field(None, ge=1)
    """Examples per optimizer step over all processes, for `auto_batch_size` (default: batch_size x grad_accum x
    processes as configured)."""

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainingSection:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0; set training.momentum (e.g. 0.9) or nesterov=false")
        return self

    @model_validator(mode="after")
    def _global_batch_needs_auto(self) -> TrainingSection:
        if self.global_batch_size is not None and not self.auto_batch_size:
            raise ValueError(
                "global_batch_size is used only with auto_batch_size: true; set training.auto_batch_size=true, or "
                "drop global_batch_size and set batch_size and grad_accum yourself"
            )
        return self


class EvalSection(Section):
    baseline: bool = True
    """Evaluate the base model before training, for the before/after table."""
    generate: bool = True
    """Generate answers for validation prompts and score exact match."""
    max_examples: int | None = Field(200, ge=1)
    """Cap on validation examples used for generation metrics."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Generation length limit. Default: twice the longest reference answer (in tokens) plus 16, at most 512 —
    a base model that rambles costs time, and tokens past that cannot turn into an exact match."""
    batch_size: int = Field(16, ge=1)
    """Prompts per generation batch."""
    samples: int = Field(3, ge=0)
    """Sample answers shown in the final report."""


class OutputSection(Section):
    dir: str = "runs"
    """Folder that holds run folders."""
    name: str | None = None
    """Run folder name; default: the config file's name."""
    overwrite: bool = False
    """Replace an existing run folder of the same name instead of stopping."""


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
    objective: Annotated[ObjectiveConfig, Field(discriminator="name")] = Field(
        default_factory=lambda: OBJECTIVE_CONFIGS["sft"]()
    )
    method: Annotated[MethodConfig, Field(discriminator="name")] = Field(
        default_factory=lambda: METHOD_CONFIGS["lora"]()
    )
    training: TrainingSection = TrainingSection()
    eval: EvalSection = EvalSection()


class TunelabConfig(Section):
    """A whole run."""

    model: ModelSection = ModelSection()
    data: DataSection
    method: Annotated[MethodConfig, Field(discriminator="name")] = Field(
        default_factory=lambda: METHOD_CONFIGS["lora"]()
    )
    objective: Annotated[ObjectiveConfig, Field(discriminator="name")] = Field(
        default_factory=lambda: OBJECTIVE_CONFIGS["sft"]()
    )
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


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> TunelabConfig:
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
        return TunelabConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where, lines)) from None


def dump_config(cfg: TunelabConfig) -> str:
    """The resolved config as YAML (every default written out), for the run folder."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override '{item}' must look like 'section.key=value', e.g. training.learning_rate=1e-4.")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in ("method", "objective"):
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


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


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section that holds the last element of `loc` (a location with the method tag removed)."""
    model: type[BaseModel] | None = TunelabConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model else []


# Sections that are a union tagged by `name`: what one is called, and the registry of its configs.
_TAGGED: dict[str, tuple[str, dict[str, type[BaseModel]]]] = {
    "method": ("a method", METHOD_CONFIGS),
    "objective": ("an objective", OBJECTIVE_CONFIGS),
}


def _explain(exc: ValidationError, where: str, lines: dict[str, int]) -> str:
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        valid: list[str] | None = None
        union = _TAGGED.get(str(loc[0])) if loc else None
        if union and len(loc) > 1 and loc[1] in union[1]:
            # pydantic puts the union's tag into the location: method.lora.r -> method.r
            valid = list(union[1][loc[1]].model_fields)
            loc = (loc[0], *loc[2:])
        dotted = ".".join(str(p) for p in loc)
        line = lines.get(dotted)
        at = f"{where}:{line}" if line else where
        kind = err["type"]
        if kind == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), valid if valid is not None else _valid_keys(loc))
            problems.append(f"{at}: unknown key '{dotted}'.{hint}")
        elif kind == "missing":
            problems.append(f"{at}: '{dotted}' is required.")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            tag = err.get("ctx", {}).get("tag", "")
            what, names = _TAGGED.get(str(loc[0]), _TAGGED["method"])
            hint = did_you_mean(str(tag), names)
            kind_name = what.split()[-1]
            problems.append(f"{at}: '{tag}' is not {what}.{hint} Valid {kind_name}s: {', '.join(names)}.")
        else:
            problems.append(f"{at}: '{dotted}': {err['msg']} (got {err.get('input')!r}).")
    head = "The config has a problem" if len(problems) == 1 else f"The config has {len(problems)} problems"
    return (
        f"{head}: " + " ".join(problems) + " Fix the config (or the --set override) and run `tunelab validate` again."
    )
