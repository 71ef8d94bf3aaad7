"""What a server loads: a run folder or model source, safetensors only, remote code off unless asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedTokenizerBase

from tunelab.core.errors import ModelError
from tunelab.methods.trained import artifact_dir, is_run, load_trained
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.recipes.runs import run_config


@dataclass
class Served:
    """A loaded model, the name clients use for it, and adapters to load onto it."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: Literal["causal-lm", "encoder"]
    adapters: dict[str, Path] = field(default_factory=dict)


def require_safetensors(folder: Path) -> None:
    """Refuse weights stored as pickles (.bin, .pt): loading one can run arbitrary code."""
    if not list(folder.glob("*.safetensors")):
        raise ModelError(
            f"'{folder}' has no .safetensors weights. The server loads only safetensors (pickled .bin/.pt files "
            "can run code when loaded); convert the model with `save_pretrained(..., safe_serialization=True)`."
        )


def load_served(
    spec: str, dtype: torch.dtype = torch.bfloat16, trust_remote_code: bool = False, name: str | None = None
) -> Served:
    """Load `spec` (run folder, embedded name, HF folder or .gguf) for serving.

    A LoRA run is served as its base model plus the run's adapter under the run's name, so more adapters can
    join the same base; any other run is served as the whole trained model.
    """
    if is_run(spec):
        run_dir = Path(spec)
        cfg = run_config(run_dir)
        saved = artifact_dir(run_dir, cfg.method.name)
        run_name = name or run_dir.resolve().name
        if cfg.method.name == "lora":
            base = _load_source(cfg.model.source, dtype, trust_remote_code, name=f"{run_name}-base")
            base.adapters[run_name] = saved
            return base
        require_safetensors(saved)
        model, tokenizer = load_trained(spec, dtype=dtype)
        return Served(run_name, model, tokenizer, "causal-lm")
    return _load_source(spec, dtype, trust_remote_code, name=name)


def _load_source(spec: str, dtype: torch.dtype, trust_remote_code: bool, name: str | None) -> Served:
    source = resolve_source(spec)
    folder = source.materialize()
    require_safetensors(folder)
    auto = AutoModelForCausalLM if source.task == "causal-lm" else AutoModel
    try:
        model = auto.from_pretrained(folder, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = (
            " If the model needs its own code, start the server with --trust-remote-code."
            if "trust" in str(exc)
            else ""
        )
        raise ModelError(f"Could not load the model in '{folder}': {exc}.{hint}") from None
    served_name = name or (spec if source.kind != "hf" else Path(spec).resolve().name)
    return Served(served_name, model.eval(), load_tokenizer(source), source.task)
