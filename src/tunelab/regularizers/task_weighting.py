"""Multi-task loss weighting around any objective: fixed weights per task, or learned uncertainty weights.

Items carry their task tag (a file's stem or a row's `task` field); the wrapped collate adds a `task` tensor of
task indices, and the wrapped training loss computes the objective's loss on each task's rows of the batch
separately and combines them:
- fixed:       Σ_t w_t · L_t,sum                                   (weights relative to the natural mixture)
- uncertainty: n · Σ_t (w_t · exp(-s_t) · L_t,sum / n_t + s_t)       (Kendall et al. 2018, s_t = log σ_t²)
where n_t counts task t's targets in the micro-batch and n = Σ n_t; the loop divides by n, so with one
micro-batch per step the uncertainty loss is exactly Σ_t exp(-s_t) L̄_t + s_t over the tasks the batch holds.
Validation is left unweighted, so val_loss means the same as in a single-task run. The learned s_t are a
parameter of `TaskWeighting`, a module inside the training module (so DDP, FSDP and DeepSpeed treat them like the
model's own weights); they are logged (`task_log_var/<task>`, and the weights they imply, `task_weight/<task>` =
exp(-s_t)) and kept in the checkpoints' loop state, so a resumed run goes on with the values it had.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from tunelab.core.errors import ConfigError, RunError, did_you_mean
from tunelab.core.types import Batch, LossParts
from tunelab.objectives.base import Objective
from tunelab.regularizers.base import TrainedTechnique

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _total(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """`sum` of tensors, of which there is at least one (a batch holds a task): a tensor, never sum's start 0."""
    return cast(torch.Tensor, sum(values))


def combine_task_losses(
    parts: dict[int, LossParts], weights: torch.Tensor, log_vars: torch.Tensor | None = None
) -> LossParts:
    """One summed loss from each task's summed loss (keyed by task index), as the module docstring says."""
    count = _total(p.count for p in parts.values())
    if log_vars is None:
        loss_sum = _total(weights[t] * p.loss_sum for t, p in parts.items())
    else:
        per_task = [
            weights[t] * torch.exp(-log_vars[t]) * p.loss_sum / p.count.clamp(min=1) + log_vars[t]
            for t, p in parts.items()
        ]
        loss_sum = count * torch.stack(per_task).sum()
    correct = [p.correct for p in parts.values() if p.correct is not None]
    return LossParts(loss_sum=loss_sum, count=count, correct=_total(correct) if correct else None)


def task_names(train: list[Any]) -> list[str]:
    """The task tags of `train`, in the order of their indices in the `task` tensor."""
    return sorted({str(getattr(item, "task", "")) for item in train})


STATE_KEY = "task_log_vars"
"""Where a checkpoint's loop state keeps the learned s_t: {task: s_t} (plain floats, as state.json is JSON)."""


class TaskWeighting(TrainedTechnique):
    """`training.task_weights` / `task_weighting` over the tasks of `train` (a file's stem, or a row's `task`)."""

    weights: torch.Tensor
    """w_t by task index (a buffer)."""

    def __init__(
        self, weights: dict[str, float], mode: Literal["fixed", "uncertainty"], train: list[Any], device: torch.device
    ) -> None:
        super().__init__()
        self.tasks = task_names(train)
        for name in weights:
            if name not in self.tasks:
                raise ConfigError(
                    f"training.task_weights names task '{name}', which no training row has."
                    f"{did_you_mean(name, self.tasks)} The tasks are: {', '.join(self.tasks)} (a file's stem, or a "
                    "row's `task` field)."
                )
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.register_buffer("weights", torch.tensor([weights.get(t, 1.0) for t in self.tasks], device=device))
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks), device=device)) if mode == "uncertainty" else None

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        inner_collate, inner_loss = objective.collate, objective.loss

        def collate(items: list[Any], pad_id: int) -> Batch:
            batch = inner_collate(items, pad_id)
            batch["task"] = torch.tensor([self.index.get(str(getattr(item, "task", "")), 0) for item in items])
            return batch

        def loss(model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
            task = batch["task"]
            inner = {k: v for k, v in batch.items() if k != "task"}
            if not (model.training and torch.is_grad_enabled()):
                return inner_loss(model, inner, ctx)
            parts = {}
            for t in task.unique().tolist():
                rows = (task == t).nonzero().squeeze(1)
                parts[int(t)] = inner_loss(model, {k: v[rows] for k, v in inner.items()}, ctx)
            return combine_task_losses(parts, self.weights, self.log_vars)

        # Uncertainty weighting divides by each task's count in the micro-batch: pieces of it would weigh differently.
        independent = objective.row_independent and self.log_vars is None
        return dataclasses.replace(objective, collate=collate, loss=loss, row_independent=independent)

    def values(self) -> dict[str, float]:
        """The learned s_t by task; {} with fixed weights."""
        if self.log_vars is None:
            return {}
        values = self.log_vars.detach()
        if hasattr(values, "full_tensor"):  # sharded by FSDP: a DTensor
            values = cast("DTensor", values).full_tensor()
        return dict(zip(self.tasks, values.float().cpu().tolist(), strict=True))

    def metrics(self) -> dict[str, float]:
        """`task_log_var/<task>` (s_t) and `task_weight/<task>` (exp(-s_t)); {} with fixed weights."""
        values = self.values()
        weights = {f"task_weight/{t}": math.exp(-s) for t, s in values.items()}
        return {f"task_log_var/{t}": s for t, s in values.items()} | weights

    def state(self) -> dict[str, Any]:
        values = self.values()
        return {STATE_KEY: values} if values else {}

    def restore(self, state: dict[str, Any]) -> None:
        """Put a checkpoint's s_t back (their optimizer moments come back with the optimizer). A checkpoint written
        without them (fixed weights then) leaves the s_t as they start."""
        saved = state.get(STATE_KEY)
        if self.log_vars is None or saved is None:
            return
        if sorted(saved) != sorted(self.tasks):
            raise RunError(
                f"The checkpoint was trained on tasks {', '.join(sorted(saved))}, but the data now holds "
                f"{', '.join(self.tasks)}. Resume with the data the run started with, or start a new run (without "
                "--resume)."
            )
        value = torch.tensor([saved[t] for t in self.tasks], dtype=self.log_vars.dtype)
        if hasattr(self.log_vars, "device_mesh"):  # sharded by FSDP: a DTensor, filled shard by shard
            from torch.distributed.tensor import distribute_tensor  # only under a distributed launch

            sharded = cast("DTensor", self.log_vars)
            value = distribute_tensor(value, sharded.device_mesh, sharded.placements)
        with torch.no_grad():
            self.log_vars.copy_(value.to(self.log_vars.device))
