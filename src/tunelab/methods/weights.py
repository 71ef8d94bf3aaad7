"""Saving and loading whole-model results (full and layer-wise methods) as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from safetensors.torch import load_file
from torch import nn

from tunelab.core.device import name_cpu_for_deepspeed

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def save_model_folder(model: nn.Module, out: Path) -> None:
    """A standalone HF folder (config + safetensors) that `from_pretrained` loads without tunelab."""
    name_cpu_for_deepspeed()
    cast("PreTrainedModel", model).save_pretrained(out, safe_serialization=True)  # not wrapped: full, freeze


def load_model_weights_(model: nn.Module, folder: Path) -> nn.Module:
    """Load every weight of a saved folder into `model` (same architecture), in place."""
    state: dict = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{folder}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model
