"""`training.dropout`: one dropout probability for the whole model while it trains.

It is set on the model once, before training, rather than around each loss call: activation checkpointing
recomputes a layer's forward in the backward pass, outside any such scope, and must see the same rate.
"""

from __future__ import annotations

from torch import nn


def set_dropout_(model: nn.Module, p: float) -> int:
    """Set every dropout of the base model to `p` (nn.Dropout modules and attention-dropout rates); adapter
    dropouts keep the method's own setting. Returns how many were changed."""
    changed = 0
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout):
            module.p, changed = p, changed + 1
        # Attention kernels take a float rate (e.g. Llama's `attention_dropout`), used only in training mode.
        for attr in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)
                changed += 1
    return changed
