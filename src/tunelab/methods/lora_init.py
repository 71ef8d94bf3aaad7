"""PiSSA / OLoRA: save the trained adapter as plain LoRA that applies to the original base.

These initialisations move part of each base weight into the adapter (W = W_res + s·B0·A0), so the trained
adapter only makes sense on top of W_res. Since W + ΔW = W_res + s·B·A, the update is ΔW = s·(B·A − B0·A0)
= s·[B | −B0]·[A ; A0]: a plain LoRA adapter of rank 2r with the same scale. peft does this conversion only from an
initial adapter saved to disk before training; we keep the (small) initial A0, B0 in memory instead, so a run needs
no extra folder, and we also keep modules_to_save tensors and rsLoRA alpha patterns correct.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

_INITIAL = "tunelab_initial_adapter"
"""Attribute on the peft model holding {state-dict name: initial tensor} for lora_A / lora_B."""


def remember_initial_(model: nn.Module) -> None:
    """Keep a copy of the freshly initialised A and B on `model`, for `save_converted`."""
    state = get_peft_model_state_dict(model)
    initial = {k: v.detach().clone() for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}
    setattr(model, _INITIAL, initial)


def has_initial(model: nn.Module) -> bool:
    return hasattr(model, _INITIAL)


def converted_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's state dict with every A replaced by [A ; A0] and every B by [B | −B0]."""
    initial: dict[str, torch.Tensor] = getattr(model, _INITIAL)
    state = get_peft_model_state_dict(model)
    out = {}
    for name, tensor in state.items():
        if name in initial and ".lora_A." in name:
            out[name] = torch.cat([tensor, initial[name].to(tensor)], dim=0)
        elif name in initial and ".lora_B." in name:
            out[name] = torch.cat([tensor, -initial[name].to(tensor)], dim=1)
        else:
            out[name] = tensor
    return {k: v.detach().contiguous() for k, v in out.items()}


def converted_config(model: nn.Module) -> PeftLoraConfig:
    """The adapter's peft config for the converted rank-2r adapter, which loads without re-initialising."""
    peft_config = cast(PeftModel, model).peft_config["default"]
    config = cast(PeftLoraConfig, copy.deepcopy(peft_config))  # the models this module sees are LoRA models
    # Doubling r halves alpha / r; doubling alpha keeps the scale (alpha / sqrt(r) needs sqrt(2) under rsLoRA).
    grow = 2**0.5 if config.use_rslora else 2.0
    config.init_lora_weights = True
    config.r *= 2
    config.lora_alpha *= grow  # pyright: ignore[reportAttributeAccessIssue] - peft says int; a float alpha works
    config.rank_pattern = {k: 2 * v for k, v in (config.rank_pattern or {}).items()}
    # A module with its own rank but no own alpha uses the global alpha, which is scaled above: nothing to add.
    config.alpha_pattern = {k: v * grow for k, v in (config.alpha_pattern or {}).items()}
    config.inference_mode = True
    return config


def save_converted(model: nn.Module, out: Path) -> None:
    """Write the converted rank-2r adapter in the PEFT format."""
    out.mkdir(parents=True, exist_ok=True)
    converted_config(model).save_pretrained(str(out))
    save_file(converted_state(model), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
