"""Training-time regularisation from the `training` section: dropout override, NEFTune embedding noise, and
L1/L2 penalties on the trained weights or on the change they make (ΔW).

The loop builds one `Regularizer` before training (`prepare_training_`) and adds `penalty()` to every
micro-batch's loss. The penalty lives here, next to the methods, because measuring ΔW needs to know what an
adapter is: LoRA's update is s·B·A (never materialised for L2), IA3's is its scale minus one.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer
from torch import nn

from tunelab.methods.schedule import optimizer_parameters

if TYPE_CHECKING:  # methods stay importable without the config module (which imports the method registry)
    from tunelab.train.config import TrainingSection

_NEFTUNE = "_tunelab_neftune_handle"


def prepare_training_(model: nn.Module, cfg: TrainingSection) -> Regularizer:
    """Apply the dropout override and NEFTune to `model` in place, and return the penalty for the loop.

    Call before restoring a checkpoint: the penalty's reference point (W0) is the model as the method left it.
    """
    if cfg.dropout is not None:
        set_dropout_(model, cfg.dropout)
    if cfg.neftune_alpha is not None:
        add_neftune_(model, cfg.neftune_alpha)
    if cfg.ewc_state is not None:  # continual learning: a pull back towards the weights of earlier tasks
        from tunelab.regularizers.ewc import with_ewc

        return with_ewc(Regularizer(model, cfg), model, cfg.ewc_state, cfg.ewc_lambda)
    return Regularizer(model, cfg)


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


def add_neftune_(model: nn.Module, alpha: float) -> None:
    """NEFTune (Jain et al., 2023): in training mode, add Uniform(-1, 1) * alpha / sqrt(length * hidden) noise to
    the input embeddings. As in transformers, `length` is the padded length of the batch."""
    embeddings = model.get_input_embeddings()
    old = getattr(embeddings, _NEFTUNE, None)
    if old is not None:
        old.remove()

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-magnitude, magnitude)

    setattr(embeddings, _NEFTUNE, embeddings.register_forward_hook(hook))


class Regularizer:
    """`penalty()` = l1 * L1 + l2 * L2² of what `training.penalty_on` measures, summed over trained tensors."""

    def __init__(self, model: nn.Module, cfg: TrainingSection) -> None:
        self.l1, self.l2, self.on = cfg.l1_penalty, cfg.l2_penalty, cfg.penalty_on
        self.active = self.l1 > 0 or self.l2 > 0
        self.device = next(model.parameters()).device
        self.lora: list[tuple[nn.Parameter, nn.Parameter, float, torch.Tensor | None, torch.Tensor | None]] = []
        self.ia3: list[nn.Parameter] = []
        self.others: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        if self.active:
            self._collect(model)

    def _collect(self, model: nn.Module) -> None:
        covered: set[int] = set()
        if self.on == "delta":
            peft_configs = getattr(model, "peft_config", {})
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    for name in module.lora_A:
                        a, b = module.lora_A[name].weight, module.lora_B[name].weight
                        # PiSSA/OLoRA start with B0·A0 != 0 moved out of the base: the change is B·A - B0·A0.
                        init = str(getattr(peft_configs.get(name), "init_lora_weights", "")).lower()
                        moved = init.startswith(("pissa", "olora"))
                        start = (a.detach().clone(), b.detach().clone()) if moved else (None, None)
                        self.lora.append((a, b, module.scaling[name], *start))
                        covered |= {id(a), id(b)}
                elif isinstance(module, IA3Layer):
                    for name in module.ia3_l:
                        self.ia3.append(module.ia3_l[name])
                        covered.add(id(module.ia3_l[name]))
        for _, p in optimizer_parameters(model):
            if id(p) in covered:
                continue
            if self.on == "weights" and p.ndim >= 2:  # like weight decay: norms and biases are not shrunk
                self.others.append((p, None))
            elif self.on == "delta":  # L2-SP: distance from the starting weights (a copy is kept)
                self.others.append((p, p.detach().clone()))

    def penalty(self) -> torch.Tensor:
        """The penalty for one optimizer step; zero (and free) when no L1/L2 coefficient is set."""
        total = torch.zeros((), device=self.device)
        if not self.active:
            return total
        cast = torch.autocast(self.device.type, enabled=False) if self.device.type in ("cpu", "cuda") else None
        with cast or contextlib.nullcontext():
            for a, b, scale, a0, b0 in self.lora:
                if a0 is not None:
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
