"""Layer-wise training: freeze the model except the top-k transformer layers and/or named modules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tunelab.methods.base import Method, decoder_layers, freeze_all_, trainable_to_fp32_, unfreeze_matching_
from tunelab.methods.weights import load_model_weights_, save_model_folder
from tunelab.schema import Section


class FreezeConfig(Section):
    name: Literal["freeze"] = "freeze"
    """Train only chosen layers; everything else stays frozen."""
    top_k_layers: int = Field(2, ge=0)
    """Train the last k transformer layers."""
    modules: list[str] = []
    """Also train parameters whose dotted name matches one of these regexes (e.g. 'norm', 'lm_head')."""


def apply_(model: nn.Module, cfg: FreezeConfig) -> nn.Module:
    freeze_all_(model)
    _, layers = decoder_layers(model)
    if cfg.top_k_layers > len(layers):
        raise ValueError(f"top_k_layers={cfg.top_k_layers} but the model has {len(layers)} layers")
    for layer in list(layers)[len(layers) - cfg.top_k_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if cfg.modules and unfreeze_matching_(model, cfg.modules) == 0:
        raise ValueError(f"method.modules {cfg.modules} match no parameter name")
    trainable_to_fp32_(model)
    return model


METHOD = Method(
    name="freeze",
    config=FreezeConfig,
    apply_=apply_,
    save=save_model_folder,
    load_=load_model_weights_,
    freezes_base=True,
)
