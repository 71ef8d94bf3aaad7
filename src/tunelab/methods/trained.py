"""A finished run's trained result, read back as a model: its base model with the method's saved result on top
(an adapter, or the whole trained weights).

Objectives need this below the run recipes (a teacher, a reference policy or a reward model may be a finished
run), so it reads only the three keys it needs from the run's `config.yaml` (`model.source`, `method.name`,
`objective.name`) instead of validating the whole config: a run folder written by an older tunelab still loads.
`tunelab.recipes.runs.run_config` reads the whole, validated config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core import safe_yaml
from tunelab.core.device import name_cpu_for_deepspeed
from tunelab.core.errors import ConfigError, RunError
from tunelab.core.files import replacing_dir
from tunelab.methods.registry import METHODS
from tunelab.models.load import load_model, load_tokenizer, tokenizer_from_folder
from tunelab.models.rope import RopeScaling, scale_rope_

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

CONFIG_FILE = "config.yaml"
"""The resolved config a run was trained with, every default written out."""
Dtype = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainedRun:
    """What a run folder says about its trained result."""

    folder: Path
    source: str
    """The base model's source (`model.source`)."""
    method: str
    objective: str
    rope_scaling: RopeScaling | None = None
    """The run's `model.rope_scaling`: the base model is loaded with it again."""

    def load_base(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The run's base model as the run trained it (its RoPE scaling applied), in eval mode."""
        return scale_rope_(load_model(self.source, dtype=dtype), self.rope_scaling)

    @property
    def artifact(self) -> Path:
        """Where the method saved the result: `adapter/` or `model/` (`Method.artifact`)."""
        return artifact_dir(self.folder, self.method)


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run folder (it holds the run's config.yaml)."""
    return (Path(path) / CONFIG_FILE).is_file()


def artifact_dir(run_dir: Path, method_name: str) -> Path:
    """Where the trained result is saved: `adapter/` for adapter methods, `model/` for whole-model methods."""
    return run_dir / METHODS[method_name].artifact


def read_run(path: str | Path) -> TrainedRun:
    """The base model, method and objective of the run in `path`."""
    folder = Path(path)
    if not is_run(folder):
        raise RunError(
            f"'{folder}' is not a tunelab run folder (it has no {CONFIG_FILE}). Give the folder `train` wrote."
        )
    try:
        raw = (
            safe_yaml.load(safe_yaml.read_text(folder / CONFIG_FILE, "run config"), str(folder / CONFIG_FILE))[0] or {}
        )
        source, method = str(raw["model"]["source"]), str(raw["method"]["name"])
        objective = str((raw.get("objective") or {}).get("name", "sft"))
        scaling = raw["model"].get("rope_scaling")
        rope = RopeScaling.model_validate(scaling) if scaling else None
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise RunError(
            f"{folder / CONFIG_FILE} does not say which model and method the run trained ({exc!s}). The file must be "
            "the one `tunelab train` wrote; restore it from the run's original folder."
        ) from None
    if method not in METHODS:
        raise RunError(f"{folder / CONFIG_FILE}: method '{method}' is not one tunelab knows ({', '.join(METHODS)}).")
    return TrainedRun(folder, source, method, objective, rope)


def load_trained(spec: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A run folder's trained model (base + adapter, or the whole trained model) or any model source, in eval mode."""
    if not is_run(spec):
        return load_model(spec, dtype=dtype), load_tokenizer(spec)
    run = read_run(spec)
    if not run.artifact.is_dir():
        raise RunError(f"Run '{spec}' has no trained result in '{run.artifact}': it did not finish. Resume it first.")
    model = METHODS[run.method].load_(run.load_base(dtype), run.artifact)
    return model.eval(), tokenizer_from_folder(run.artifact)


def save_merged(spec: str, out: str | Path, dtype: Dtype = "fp32", max_shard_size: str = "2GB") -> Path:
    """A run folder or any model source, adapters merged into their base (W + ΔW), saved to `out` as a standalone
    HF folder: safetensors, split into `max_shard_size` shards with an index when larger (the layout transformers
    and vLLM both read), with the tokenizer, its chat template and the generation config.

    Written into a temporary folder beside `out` and renamed into place: a failure (a full disk: `DiskFullError`)
    leaves what `out` held before, and a model written over an older one keeps none of the older one's files.
    An `out` holding anything else than a model tunelab could have written is refused."""
    out = Path(out)
    check_replaceable(out)
    # Merge in fp32 whatever the output dtype: adding a small ΔW to bf16 weights would round much of it away.
    model, tokenizer = load_trained(spec, dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):  # a peft model: its adapters are folded into the weights
        model = cast("PeftModel", model).merge_and_unload()
    merged = cast("PreTrainedModel", model.to(DTYPES[dtype]))  # the transformers model, adapters merged or none
    with replacing_dir(out, f"the merged model ({out})", f"run the command again ('{out}' was left as it was).") as tmp:
        name_cpu_for_deepspeed()
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
    return out


_MODEL_MARKERS = ("config.json", "adapter_config.json")


def check_replaceable(out: Path) -> None:
    """Refuse an output folder that exists, is not empty and holds no model or adapter (an export replaces the
    whole folder, which must not take unrelated files with it)."""
    if out.is_dir() and any(out.iterdir()) and not any((out / m).is_file() for m in _MODEL_MARKERS):
        raise RunError(
            f"'{out}' exists and holds no model (no config.json or adapter_config.json), so tunelab will not replace "
            "it: an export replaces the whole folder. Choose a new or empty folder for --out."
        )
    if out.exists() and not out.is_dir():
        raise RunError(f"'{out}' exists and is a file; an export writes a folder there. Choose another --out.")
