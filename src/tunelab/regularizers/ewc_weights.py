"""Which weights EWC constrains, named so the name survives the change of method between stages.

EWC compares *effective* weights: for a LoRA-adapted layer, W0 + ΔW (peft's `get_delta_weight`), not the LoRA
factors. So a later stage may train the same adapter, a fresh adapter on a base into which the earlier adapter
was merged, or every weight, and the penalty still measures how far the function moved from the earlier task's.
Names are those of a plain model's state dict ("model.layers.0.self_attn.q_proj.weight"): peft's
"base_model.model." prefix and ".base_layer" infix are removed.

The Fisher of an effective weight is taken on the tensor the forward actually multiplies by: the parameter itself,
or, for a LoRA layer, its (frozen) base weight, whose gradient equals that of W0 + ΔW.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

PEFT_PREFIX = "base_model.model."


@dataclass
class EWCWeight:
    grad_of: torch.Tensor
    """The tensor whose gradient is this weight's gradient (a parameter, or a LoRA layer's base weight)."""
    value: Callable[[], torch.Tensor]
    """The effective weight now, differentiable with respect to what trains."""


def canonical_name(name: str) -> str:
    """A parameter's name as in the plain model's state dict."""
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def ewc_weights(model: nn.Module) -> dict[str, EWCWeight]:
    """Every weight that training can change: trainable parameters, and LoRA-adapted layers as W0 + ΔW."""
    out: dict[str, EWCWeight] = {}
    adapter_params: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        # peft's LoRA layers are modules too (LoraLayer itself does not derive from nn.Module)
        adapter_params |= {id(p) for n, p in cast(nn.Module, module).named_parameters() if "lora_" in n}
        active = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
        if not active or module.merged:
            continue
        base = cast(torch.Tensor, module.get_base_layer().weight)

        def effective(
            module: LoraLayer = module, base: torch.Tensor = base, active: list[str] = active
        ) -> torch.Tensor:
            # each concrete LoRA layer (Linear, Embedding, Conv) defines get_delta_weight; LoraLayer does not declare it
            return base + sum(module.get_delta_weight(a) for a in active)  # pyright: ignore[reportAttributeAccessIssue]

        out[canonical_name(f"{module_name}.weight")] = EWCWeight(base, effective)
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in adapter_params:
            out[canonical_name(name)] = EWCWeight(p, lambda p=p: p)
    return out
