"""Elastic weight consolidation (Kirkpatrick et al. 2017): λ/2 · Σ_i F_i (θ_i - θ*_i)², a quadratic pull back
towards the weights of earlier tasks, strongest where the Fisher says those tasks are sensitive.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.continual.fisher import EWCState, trainable
from tunelab.errors import ConfigError


def ewc_penalty(
    model: nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], lam: float
) -> torch.Tensor:
    """λ/2 · Σ F (θ - θ*)² over the model's trainable parameters that `fisher` names (others are free)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, p in trainable(model).items():
        if name in fisher:
            f, a = fisher[name].to(p.device), anchor[name].to(p.device)
            total = total + (f * (p.float() - a).pow(2)).sum()
    return 0.5 * lam * total


class EWCRegularizer:
    """The EWC term for the training loop: built once (tensors moved to the model's device), `penalty()` per step.

    Refuses a state that shares no parameter with the model: that means the Fisher came from another method
    or model, and silently adding 0 would train without any protection.
    """

    def __init__(self, model: nn.Module, state: EWCState, lam: float) -> None:
        params = trainable(model)
        shared = [n for n in state.fisher if n in params]
        if not shared:
            sample = next(iter(state.fisher), "(none)")
            raise ConfigError(
                f"The EWC state names no trainable parameter of this model (e.g. '{sample}'). EWC needs the same "
                "model and method as the stage that saved it; continue from that run's model or adapter."
            )
        for n in shared:
            if state.fisher[n].shape != params[n].shape:
                raise ConfigError(
                    f"EWC: parameter '{n}' has shape {tuple(params[n].shape)} here but {tuple(state.fisher[n].shape)} "
                    "in the saved Fisher. Use the same method settings (e.g. LoRA rank) as the previous stage."
                )
        self.lam = lam
        self.terms = [
            (params[n], state.fisher[n].to(params[n].device), state.anchor[n].to(params[n].device)) for n in shared
        ]

    def penalty(self) -> torch.Tensor:
        """λ/2 · Σ F (θ - θ*)², computed in fp32 outside any autocast."""
        device = self.terms[0][0].device
        with torch.autocast(device.type, enabled=False):
            total = sum(((f * (p.float() - a).pow(2)).sum() for p, f, a in self.terms), torch.zeros((), device=device))
        return 0.5 * self.lam * total
