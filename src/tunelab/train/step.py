"""One optimizer step, the same for training, the learning-rate range test and batch-size probing.

A step is a group of micro-batches (row pieces of them, under a token budget). Each goes forward and backward with
its summed loss divided by the targets (tokens, pairs) of the *whole step on every process*, so accumulation and
data parallelism give the gradient of one big batch (DDP averages over processes, hence the factor `world`); a
penalty is per step, so each micro-batch carries an equal share. Then the step's backend clips and updates,
skipping an update whose loss or gradient norm is not finite on some process.

Backends: `AccelerateSteps` (one process, DDP, FSDP), `zero.EngineSteps` (DeepSpeed's engine), `ProbeSteps`
(forward and backward only: does a step of this size fit in memory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from accelerate import Accelerator
from torch import nn

from tunelab.core.device import autocast
from tunelab.core.types import Batch
from tunelab.objectives.base import Objective
from tunelab.train.distributed import replicated, summed


class Steps(Protocol):
    """How a step's micro-batches go backward and how the step is taken."""

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, step_loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Clip and update; the gradient norm before clipping and whether the update was made."""
        ...


@dataclass
class StepResult:
    loss_sum: torch.Tensor
    """The summed (unnormalised) loss of this process's micro-batches, detached."""
    targets: int
    """What the step's loss is normalised by, over all processes."""
    tokens: int
    """Real (unpadded) tokens this process ran through the model."""
    grad_norm: torch.Tensor
    good: bool
    """Whether the update was made (False: the loss or the gradient norm was not finite)."""


def train_step(
    module: nn.Module,
    objective: Objective,
    group: Sequence[Batch],
    steps: Steps,
    *,
    device: torch.device,
    bf16: bool,
    accelerator: Accelerator | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> StepResult:
    """Forward and backward every micro-batch of `group` through `module`, then `steps.step`. With `accelerator`
    the step's targets are counted over all its processes (data parallelism); without, over this process only."""
    world = accelerator.num_processes if accelerator is not None else 1
    step_targets = torch.tensor(sum(objective.count(g) for g in group), device=device)
    targets = int((summed(accelerator, step_targets) if accelerator is not None else step_targets).item())
    step_loss = torch.zeros((), device=device)
    tokens = 0
    for k, batch in enumerate(group):
        with steps.micro_batch(last=k == len(group) - 1), autocast(device, bf16):
            loss_sum, _, _ = module({key: v.to(device) for key, v in batch.items()})
            loss = loss_sum * world / max(targets, 1)
            if penalty is not None:
                loss = loss + penalty() / len(group)
        steps.backward(loss)
        step_loss += loss_sum.detach()
        # Every input's mask counts: pair objectives (contrastive) hold one per role.
        tokens += sum(int(v.sum()) for key, v in batch.items() if key.endswith("attention_mask"))
    grad_norm, good = steps.step(step_loss)
    return StepResult(step_loss, targets, tokens, grad_norm, good)


@dataclass
class AccelerateSteps:
    """How a step's micro-batches go backward and the step is taken through accelerate (one process, DDP, FSDP):
    gradients synchronised on the last micro-batch only, clipped, and the update skipped when the loss or the
    norm is not finite on some process. `zero.EngineSteps` does the same through DeepSpeed's engine."""

    accelerator: Accelerator
    module: nn.Module
    optimizer: torch.optim.Optimizer
    max_grad_norm: float | None

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.module)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, step_loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Clip and update; the gradient norm before clipping and whether the update was made."""
        if self.max_grad_norm:
            norm = self.accelerator.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
            assert norm is not None  # None only under accelerate's own DeepSpeed; tunelab drives it by EngineSteps
        else:
            norm = _grad_norm(self.module)
        grad_norm = replicated(norm)  # a norm over sharded gradients is a DTensor
        # The processes must agree, or their weights would drift apart. One flag read per step (the token count
        # already syncs once per step).
        bad = ~torch.isfinite(step_loss) | ~torch.isfinite(grad_norm.to(step_loss.device, torch.float32))
        good = summed(self.accelerator, bad.float()).item() == 0
        if good:
            self.optimizer.step()
        return grad_norm, good


class ProbeSteps:
    """Backward only, never an update: what batch-size probing runs to see whether a step fits in memory."""

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, step_loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        return torch.zeros(()), False


def _grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
