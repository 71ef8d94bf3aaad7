"""Prefix tuning: learnt key/value vectors prepended to every attention layer (through peft, decoder models).

The base model never changes, so the result cannot be merged into the weights; it stays a PEFT adapter.
"""

from __future__ import annotations

from typing import Literal

from peft import PrefixTuningConfig
from pydantic import Field
from torch import nn

from tunelab.core.schema import Section
from tunelab.methods.base import Method
from tunelab.methods.peft_io import load_adapter_, require_decoder, save_adapter, wrap_


class PrefixConfig(Section):
    name: Literal["prefix"] = "prefix"
    """Learn `num_virtual_tokens` key/value pairs per layer that every token attends to; the base stays frozen."""
    num_virtual_tokens: int = Field(default=16, ge=1)
    """Prefix length. Each virtual token costs 2 x layers x key/value width parameters."""
    projection: bool = False
    """Produce the prefix through a two-layer MLP (Li & Liang's reparameterisation, steadier early training)."""
    projection_hidden: int = Field(default=512, ge=1)
    """Hidden width of that MLP."""


def apply_(model: nn.Module, cfg: PrefixConfig) -> nn.Module:
    require_decoder(model, "prefix")
    config = PrefixTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.projection,
        encoder_hidden_size=cfg.projection_hidden,
        task_type="CAUSAL_LM",
    )
    return wrap_(model, config)


METHOD = Method(
    name="prefix",
    config=PrefixConfig,
    apply_=apply_,
    save=save_adapter,
    load_=load_adapter_,
    freezes_base=True,
    artifact="adapter",
    mergeable=False,
)
