"""L1/L2 penalties on the trained weights, or on the change they make (ΔW): `training.l1_penalty`, `l2_penalty`,
`penalty_on`.

Measuring ΔW needs to know what an adapter is: LoRA's update is s·B·A (never materialised for L2), IA3's is its
scale minus one, and fully trained weights are compared with a copy of their starting values (L2-SP).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer
from torch import nn

from tunelab.core.device import full_precision


class DeltaPenalty:
    """`penalty()` = l1 * L1 + l2 * L2² of what `on` measures, summed over the trained tensors: the change from the
    starting model (`delta`) or the weights themselves (`weights`).

    Build it before a checkpoint is restored: the reference point W0 is the model as the method set it up.
    `trainable` are the tensors the optimizer holds (those that train later under gradual unfreezing included)."""

    def __init__(
        self,
        model: nn.Module,
        l1: float,
        l2: float,
        on: Literal["delta", "weights"],
        trainable: list[nn.Parameter],
    ) -> None:
        self.l1, self.l2, self.on = l1, l2, on
        self.device = next(model.parameters()).device
        self.lora: list[tuple[nn.Parameter, nn.Parameter, float, torch.Tensor | None, torch.Tensor | None]] = []
        self.ia3: list[nn.Parameter] = []
        self.others: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        self._collect(model, trainable)

    def _collect(self, model: nn.Module, trainable: list[nn.Parameter]) -> None:
        covered: set[int] = set()
        if self.on == "delta":
            peft_configs = getattr(model, "peft_config", {})
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    for name in module.lora_A:
                        a = cast(nn.Parameter, module.lora_A[name].weight)
                        b = cast(nn.Parameter, module.lora_B[name].weight)
                        # PiSSA/OLoRA start with B0·A0 != 0 moved out of the base: the change is B·A - B0·A0.
                        init = str(getattr(peft_configs.get(name), "init_lora_weights", "")).lower()
                        moved = init.startswith(("pissa", "olora"))
                        a0, b0 = (a.detach().clone(), b.detach().clone()) if moved else (None, None)
                        self.lora.append((a, b, module.scaling[name], a0, b0))
                        covered |= {id(a), id(b)}
                elif isinstance(module, IA3Layer):
                    for name in module.ia3_l:
                        self.ia3.append(module.ia3_l[name])
                        covered.add(id(module.ia3_l[name]))
        for p in trainable:
            if id(p) in covered:
                continue
            if self.on == "weights" and p.ndim >= 2:  # like weight decay: norms and biases are not shrunk
                self.others.append((p, None))
            elif self.on == "delta":  # L2-SP: distance from the starting weights (a copy is kept)
                self.others.append((p, p.detach().clone()))

    def penalty(self) -> torch.Tensor:
        """The penalty for one optimizer step, in fp32 outside any autocast region."""
        total = torch.zeros((), device=self.device)
        with full_precision(self.device):
            for a, b, scale, a0, b0 in self.lora:
                if a0 is not None and b0 is not None:  # both kept, or neither
                    a, b = torch.cat([a, a0]), torch.cat([b, -b0], dim=1)
                total = total + self._lowrank(a.float(), b.float(), float(scale))
            for scale_vector in self.ia3:
                total = total + self._dense(scale_vector.float() - 1.0)
            for p, start in self.others:
                total = total + self._dense(p.float() - start if start is not None else p.float())
        return total

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(())
        if self.l1:
            out = out + self.l1 * x.abs().sum()
        if self.l2:
            out = out + self.l2 * x.pow(2).sum()
        return out

    def _lowrank(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        # ||s·B·A||² = s² · sum((BᵀB) ⊙ (A·Aᵀ)): two r x r products instead of the out x in update.
        out = a.new_zeros(())
        if self.l2:
            out = out + self.l2 * scale**2 * ((b.T @ b) * (a @ a.T)).sum()
        if self.l1:  # no shortcut for L1: the update is built, one module at a time
            out = out + self.l1 * (scale * (b @ a)).abs().sum()
        return out
