"""Validation during and after training: the objective's loss and accuracy over a held-out set, computed as the
loop computes them (the same collate, the same row pieces), overall and per task."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tunelab.core.device import autocast, eval_mode
from tunelab.train.microbatch import Pieces, split_rows
from tunelab.train.module import training_module

VALIDATION_ROW_KEYS = ("loss", "count", "correct")
"""One validation row's sums: its loss summed over what the objective counts, that count, and the right ones."""


@torch.no_grad()
def validation_metrics(
    module: nn.Module,
    data: list[Any],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    pieces: Pieces | None = None,
    rows: list[dict[str, float]] | None = None,
) -> dict[str, float]:
    """Validation loss averaged as the objective counts (tokens, pairs), its accuracy (`val_token_acc`,
    `val_pair_acc`, ...) and, for language modelling, perplexity. With `pieces` (the training's) a batch of a
    row-sum objective runs in row pieces, as training does: the same sums, and no larger working set than a
    training step.

    With `rows` (a list to fill) and an objective whose loss is a sum over rows, every row runs alone and `rows`
    gets each one's sums in data order, `{"loss", "count", "correct"}` (`VALIDATION_ROW_KEYS`): the per-example
    evidence from which the metrics' intervals and paired tests are computed (`tunelab.eval.compare`)."""
    objective = training_module(module).objective  # under DDP the TrainingModule is wrapped
    budget = pieces if objective.row_independent else None
    per_row = rows is not None and objective.row_independent
    found: dict[int, dict[str, float]] = {}
    loss_sum = count = correct = 0.0
    order = sorted(range(len(data)), key=lambda i: objective.length(data[i]))
    with eval_mode(module):
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            for group in [[i] for i in chosen] if per_row else [chosen]:
                sums = [0.0, 0.0, 0.0]
                for piece in split_rows(objective.collate([data[i] for i in group], pad_id), budget):
                    with autocast(device, bf16):
                        loss, n, right = module({k: v.to(device) for k, v in piece.items()})
                    sums = [sums[0] + float(loss), sums[1] + float(n), sums[2] + float(right)]
                if per_row:
                    found[group[0]] = dict(zip(VALIDATION_ROW_KEYS, sums, strict=True))
                loss_sum, count, correct = loss_sum + sums[0], count + sums[1], correct + sums[2]
    if rows is not None:
        rows.extend(found[i] for i in sorted(found))  # data order (batches ran sorted by length)
    mean = loss_sum / max(count, 1.0)
    metrics = {"val_loss": mean, f"val_{objective.metric}": correct / max(count, 1.0)}
    tasks = sorted({str(getattr(item, "task", "")) for item in data})
    for task in tasks if len(tasks) > 1 else []:  # multi-task data: each task's own numbers, e.g. val_loss/dates
        own = [item for item in data if str(getattr(item, "task", "")) == task]
        own_metrics = validation_metrics(module, own, batch_size, pad_id, device, bf16, pieces)
        metrics.update({f"{k}/{task}": v for k, v in own_metrics.items()})
    return {**metrics, "val_ppl": math.exp(min(mean, 50.0))} if objective.perplexity else metrics
