"""What a regularizer is, to the training loop: an extra term added to the loss (`Penalty`), or a wrapper around
the objective's loss (`LossWrapper`). A wrapper whose terms have weights of their own to learn is also a
`TrainedTechnique`: a module that sits inside the training module, so data parallelism, sharding and DeepSpeed
see its parameters, and that keeps what it learned in the checkpoint's loop state.

`tunelab.train.techniques` builds a run's regularizers from the `training` section; the loop only calls these
protocols. A regularizer never changes the objective or the model it is given: `wrap` returns a new objective.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from tunelab.objectives.base import Objective


class Penalty(Protocol):
    """A term added to the loss once per optimizer step (the loop gives each micro-batch an equal share)."""

    def penalty(self) -> torch.Tensor: ...


class LossWrapper(Protocol):
    """A change to how the objective's training loss is computed (validation stays the plain objective)."""

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        """`objective` with its training loss (and, if it needs to, its collate) wrapped."""
        ...


class Reporting(Protocol):
    """A regularizer with numbers of its own for the metrics line (a MoE run's routing terms and expert load)."""

    def metrics(self) -> dict[str, float]: ...


class TrainedTechnique(nn.Module):
    """A loss wrapper with parameters that train with the model (the learned task uncertainties)."""

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """What the metrics line logs about it (e.g. the learned weights)."""
        return {}

    def state(self) -> dict[str, Any]:
        """What a checkpoint's loop state (JSON) keeps of it."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Put back what `state` saved, from a checkpoint's loop state."""
