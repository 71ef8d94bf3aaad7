"""The module the loop trains: the model, its objective, and the techniques that learn weights beside it.

Wrapping them in one module makes a distributed wrapper (DDP, FSDP, a DeepSpeed engine) see the whole loss
computation as one forward: DDP synchronises gradients through hooks on the wrapped module's forward, FSDP gathers
the root's weights only inside it, and a DeepSpeed engine manages exactly the parameters of the module it wraps.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from tunelab.core.types import Batch
from tunelab.objectives.base import Objective
from tunelab.regularizers.base import TrainedTechnique


class TrainingModule(nn.Module):
    """`model` under `objective` (already wrapped by the loss wrappers), with `techniques`' own parameters."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective[Any, Any],
        ctx: Any = None,
        techniques: dict[str, TrainedTechnique] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.ctx = ctx
        """What the objective's setup built (a reference model, a teacher): held, not registered as a submodule,
        so it is neither trained nor synchronised by DDP."""
        self.techniques = nn.ModuleDict(techniques or {})
        """Regularizers with weights of their own (task uncertainties), trained, synchronised and sharded with the
        model; checkpoints keep them in the loop state (`TrainedTechnique.state`)."""

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = self.objective.loss(self.model, batch, self.ctx)
        correct = parts.correct if parts.correct is not None else torch.zeros((), device=parts.loss_sum.device)
        return parts.loss_sum, parts.count, correct


def training_module(module: nn.Module) -> TrainingModule:
    """The `TrainingModule` in `module`: itself, or the one a DDP wrapper holds as `module.module`."""
    return cast(TrainingModule, getattr(module, "module", module))
