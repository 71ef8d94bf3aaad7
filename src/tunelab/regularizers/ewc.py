"""Elastic weight consolidation (Kirkpatrick et al. 2017): λ/2 · Σ_i F_i (θ_i - θ*_i)², a quadratic pull back
towards the weights of earlier tasks, strongest where the Fisher says those tasks are sensitive.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.core.device import full_precision
from tunelab.core.errors import ConfigError
from tunelab.regularizers.ewc_weights import ewc_weights
from tunelab.regularizers.fisher import EWCState, load_ewc


def ewc_penalty(
    model: nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], lam: float
) -> torch.Tensor:
    """λ/2 · Σ F (θ - θ*)² over the model's effective weights that `fisher` names (others are free)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, w in ewc_weights(model).items():
        if name in fisher:
            value = w.value()
            f, a = fisher[name].to(value.device), anchor[name].to(value.device)
            total = total + (f * (value.float() - a).pow(2)).sum()
    return 0.5 * lam * total


class EWCPenalty:
    """The EWC term for the training loop: built once (tensors moved to the model's device), `penalty()` per step.
    `EWCPenalty.from_file` reads the state an earlier stage saved (`training.ewc_state`).

    Memory: the Fisher and the anchor are two fp32 copies of every constrained weight; a LoRA layer's effective
    weight is rebuilt (W0 + ΔW) at each call.

    Refuses a state that shares no parameter with the model: that means the Fisher came from another method
    or model, and silently adding 0 would train without any protection.
    """

    def __init__(self, model: nn.Module, state: EWCState, lam: float) -> None:
        weights = ewc_weights(model)
        shared = [n for n in state.fisher if n in weights]
        if not shared:
            sample = next(iter(state.fisher), "(none)")
            raise ConfigError(
                f"The EWC state names no weight this model trains (e.g. '{sample}'). EWC needs the model the earlier "
                "stage ended with (its weights, or its adapter merged into the base) under the same architecture"
            )
        for n in shared:
            if state.fisher[n].shape != weights[n].grad_of.shape:
                raise ConfigError(
                    f"EWC: weight '{n}' has shape {tuple(weights[n].grad_of.shape)} here but "
                    f"{tuple(state.fisher[n].shape)} in the saved Fisher. Continue from the previous stage's model."
                )
        self.lam = lam
        self.device = weights[shared[0]].grad_of.device
        self.terms = [
            (weights[n].value, state.fisher[n].to(self.device), state.anchor[n].to(self.device)) for n in shared
        ]

    @classmethod
    def from_file(cls, model: nn.Module, path: str, lam: float) -> EWCPenalty:
        return cls(model, load_ewc(path), lam)

    def penalty(self) -> torch.Tensor:
        """λ/2 · Σ F (θ - θ*)², computed in fp32 outside any autocast."""
        with full_precision(self.device):
            zero = torch.zeros((), device=self.device)
            total = sum(((f * (value().float() - a).pow(2)).sum() for value, f, a in self.terms), zero)
        return 0.5 * self.lam * total
