"""What a method is, and helpers the methods share (finding layers, counting and casting parameters)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

import torch
from torch import nn

from tunelab.core.schema import Section
from tunelab.models.parts import decoder_layers


class StepHook:
    """Something that changes (gradual unfreezing) or watches as training goes: the loop calls it around every
    optimizer step. Every hook has no-op defaults; a hook overrides what it needs."""

    def on_step_start(self, step: int, epoch: int) -> None:
        """Before optimizer step `step + 1` (of epoch `epoch`)."""

    def on_step_end(self, step: int) -> None:
        """After optimizer step `step` (and its logging, evaluation and checkpoint)."""

    def dormant_parameters(self) -> list[nn.Parameter]:
        """Weights frozen now that will train later: the optimizer must hold them from the start."""
        return []


C = TypeVar("C", bound=Section)


def no_step_hooks(model: nn.Module, cfg: Section) -> list[StepHook]:
    return []


@dataclass(frozen=True)
class Method(Generic[C]):
    """A way to choose which weights learn.

    `apply_` changes the model in place (freezes, wraps) and returns the model to train; `save` writes the
    trained result in the format other tools read; `load_` puts a saved result onto a freshly loaded base.
    `artifact` names the run sub-folder the result goes to; `mergeable` says whether `export` can fold the
    result into the base weights (adapters that stay as extra modules or virtual tokens cannot be). A method is
    generic in its config section `C`, which `apply_` and `step_hooks` receive.
    """

    name: str
    config: type[C]
    apply_: Callable[[nn.Module, C], nn.Module]
    save: Callable[[nn.Module, Path], None]
    load_: Callable[[nn.Module, Path], nn.Module]
    freezes_base: bool
    artifact: Literal["adapter", "model"] = "model"
    mergeable: bool = True
    step_hooks: Callable[[nn.Module, C], list[StepHook]] = no_step_hooks
    """(model as `apply_` left it, method config) -> what changes during training (gradual unfreezing)."""


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def freeze_all_(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_matching_(model: nn.Module, patterns: list[str]) -> int:
    """Unfreeze parameters whose dotted name matches any regex; returns how many tensors matched."""
    compiled = [re.compile(p) for p in patterns]
    hits = 0
    for name, p in model.named_parameters():
        if any(c.search(name) for c in compiled):
            p.requires_grad_(True)
            hits += 1
    return hits


def trainable_to_fp32_(model: nn.Module) -> None:
    """Trainable weights (and so their optimizer state) stay fp32 even when frozen weights are bf16."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def layer_index_by_parameter(model: nn.Module) -> tuple[int, dict[int, int]]:
    """(number of transformer layers, {id(parameter): index of the layer that holds it})."""
    _, layers = decoder_layers(model)
    index = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    return len(layers), index
