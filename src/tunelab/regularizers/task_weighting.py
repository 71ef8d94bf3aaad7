"""Multi-task loss weighting around any objective: fixed weights per task, or learned uncertainty weights.

Items carry their task tag (a file's stem or a row's `task` field); the wrapped collate adds a `task` tensor of
task indices, and the wrapped training loss computes the objective's loss on each task's rows of the batch
separately and combines them:
- fixed:       Σ_t w_t · L_t,sum                                   (weights relative to the natural mixture)
- uncertainty: n · Σ_t (w_t · exp(-s_t) · L_t,sum / n_t + s_t)       (Kendall et al. 2018, s_t = log σ_t²)
where n_t counts task t's targets in the micro-batch and n = Σ n_t; the loop divides by n, so with one
micro-batch per step the uncertainty loss is exactly Σ_t exp(-s_t) L̄_t + s_t over the tasks the batch holds.
Validation is left unweighted, so val_loss means the same as in a single-task run. The learned s_t are logged
(`task_log_var/<task>`, and the weights they imply, `task_weight/<task>` = exp(-s_t)) and kept in checkpoints,
so a resumed run goes on with the values it had.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunelab.core.errors import ConfigError, RunError, did_you_mean
from tunelab.core.types import Batch, LossParts
from tunelab.objectives.base import Objective

if TYPE_CHECKING:
    from tunelab.train.config import TrainingSection


def combine_task_losses(
    parts: dict[int, LossParts], weights: torch.Tensor, log_vars: torch.Tensor | None = None
) -> LossParts:
    """One summed loss from each task's summed loss (keyed by task index), as the module docstring says."""
    count = sum(p.count for p in parts.values())
    if log_vars is None:
        loss_sum = sum(weights[t] * p.loss_sum for t, p in parts.items())
    else:
        per_task = [
            weights[t] * torch.exp(-log_vars[t]) * p.loss_sum / p.count.clamp(min=1) + log_vars[t]
            for t, p in parts.items()
        ]
        loss_sum = count * torch.stack(per_task).sum()
    correct = [p.correct for p in parts.values() if p.correct is not None]
    return LossParts(loss_sum=loss_sum, count=count, correct=sum(correct) if correct else None)


def with_task_weighting(
    objective: Objective, cfg: TrainingSection, train: list[Any], device: torch.device
) -> tuple[Objective, list[nn.Parameter]]:
    """`objective` with per-task weighting when `training.task_weights` or `task_weighting: uncertainty` asks for
    it, and the parameters the optimizer must train (the s_t of uncertainty weighting); else `objective`, []."""
    if not cfg.task_weights and cfg.task_weighting == "fixed":
        return objective, []
    tasks = sorted({str(getattr(item, "task", "")) for item in train})
    for name in cfg.task_weights:
        if name not in tasks:
            raise ConfigError(
                f"training.task_weights names task '{name}', which no training row has.{did_you_mean(name, tasks)} "
                f"The tasks are: {', '.join(tasks)} (a file's stem, or a row's `task` field)."
            )
    index = {t: i for i, t in enumerate(tasks)}
    weights = torch.tensor([cfg.task_weights.get(t, 1.0) for t in tasks], device=device)
    log_vars = nn.Parameter(torch.zeros(len(tasks), device=device)) if cfg.task_weighting == "uncertainty" else None

    def collate(items: list[Any], pad_id: int) -> Batch:
        batch = objective.collate(items, pad_id)
        batch["task"] = torch.tensor([index.get(str(getattr(item, "task", "")), 0) for item in items])
        return batch

    def loss(model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
        task = batch["task"]
        inner = {k: v for k, v in batch.items() if k != "task"}
        if not (model.training and torch.is_grad_enabled()):
            return objective.loss(model, inner, ctx)
        parts = {}
        for t in task.unique().tolist():
            rows = (task == t).nonzero().squeeze(1)
            parts[int(t)] = objective.loss(model, {k: v[rows] for k, v in inner.items()}, ctx)
        return combine_task_losses(parts, weights, log_vars)

    # Uncertainty weighting divides by each task's count in the micro-batch: pieces of it would weigh differently.
    wrapped = dataclasses.replace(
        objective, collate=collate, loss=loss, row_independent=objective.row_independent and log_vars is None
    )
    return wrapped, [log_vars] if log_vars is not None else []


def task_names(train: list[Any]) -> list[str]:
    """The task tags of `train`, in the order of their indices in the `task` tensor."""
    return sorted({str(getattr(item, "task", "")) for item in train})


STATE_KEY = "task_log_vars"
"""Where a checkpoint's loop state keeps the learned s_t: {task: s_t} (plain floats, as state.json is JSON)."""


def log_vars(params: list[nn.Parameter], tasks: list[str]) -> dict[str, float]:
    """The learned s_t by task; {} without uncertainty weighting."""
    return dict(zip(tasks, params[0].detach().float().cpu().tolist(), strict=True)) if params else {}


def log_var_metrics(params: list[nn.Parameter], tasks: list[str]) -> dict[str, float]:
    """`task_log_var/<task>` (s_t) and `task_weight/<task>` (exp(-s_t)) of uncertainty weighting; {} without it."""
    values = log_vars(params, tasks)
    weights = {f"task_weight/{t}": math.exp(-s) for t, s in values.items()}
    return {f"task_log_var/{t}": s for t, s in values.items()} | weights


def log_var_state(params: list[nn.Parameter], tasks: list[str]) -> dict[str, dict[str, float]]:
    """The s_t as a checkpoint's loop state keeps them, {STATE_KEY: {task: s_t}}; {} without uncertainty weighting."""
    values = log_vars(params, tasks)
    return {STATE_KEY: values} if values else {}


def restore_log_vars_(params: list[nn.Parameter], tasks: list[str], state: dict[str, Any]) -> None:
    """Put a checkpoint's s_t back into the learned parameter (its optimizer moments come back with the optimizer).
    A checkpoint written without them (an older run, or fixed weights then) leaves the s_t as they start."""
    saved = state.get(STATE_KEY)
    if not params or saved is None:
        return
    if sorted(saved) != sorted(tasks):
        raise RunError(
            f"The checkpoint was trained on tasks {', '.join(sorted(saved))}, but the data now holds "
            f"{', '.join(tasks)}. Resume with the data the run started with, or start a new run (without --resume)."
        )
    with torch.no_grad():
        params[0].copy_(torch.tensor([saved[t] for t in tasks], dtype=params[0].dtype))
