"""Full fine-tuning: every weight learns. Saved as a standalone Hugging Face model folder."""

from __future__ import annotations

from typing import Literal

from torch import nn

from tunelab.core.schema import Section
from tunelab.methods.base import Method, trainable_to_fp32_
from tunelab.methods.weights import load_model_weights_, save_model_folder


class FullConfig(Section):
    name: Literal["full"] = "full"
    """Train every weight of the model."""


def apply_(model: nn.Module, cfg: FullConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    trainable_to_fp32_(model)
    return model


METHOD = Method(
    name="full",
    config=FullConfig,
    apply_=apply_,
    save=save_model_folder,
    load_=load_model_weights_,
    freezes_base=False,
)
