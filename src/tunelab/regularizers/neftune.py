"""NEFTune (Jain et al., 2023): noisy input embeddings while training.

While the training loss is computed, Uniform(-1, 1) · alpha / sqrt(length · hidden) noise is added to the output
of the embedding layer; as in transformers, `length` is the padded length of the batch. The noise exists only
inside the wrapped loss call (a forward hook registered and removed around it), so evaluation, generation and
anything else that runs the model see clean embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from tunelab.core.types import Batch, LossParts
from tunelab.models.parts import input_embeddings
from tunelab.objectives.base import Objective


def neftune_noise(alpha: float):
    """The forward hook that adds the noise to an embedding layer's output in training mode."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-magnitude, magnitude)

    return hook


@dataclasses.dataclass(frozen=True)
class NEFTune:
    alpha: float

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        inner = objective.loss

        def loss(model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
            if not model.training:
                return inner(model, batch, ctx)
            handle = input_embeddings(model).register_forward_hook(neftune_noise(self.alpha))
            try:
                return inner(model, batch, ctx)
            finally:
                handle.remove()

        return dataclasses.replace(objective, loss=loss)
