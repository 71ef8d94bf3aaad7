"""Method state that changes during training: gradual unfreezing (ULMFiT), driven by the loop's step counter.

A method that unfreezes over time attaches an `UnfreezeSchedule` to the model in `apply_`. The loop calls
`on_step_(model, step, epoch)` before every optimizer step; the optimizer is built over `optimizer_parameters`,
which include the weights that are still frozen but will train later (a parameter without a gradient is skipped
by every torch optimizer, so holding them costs nothing until they thaw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

_SCHEDULE = "tunelab_unfreeze_schedule"


@dataclass
class UnfreezeSchedule:
    """Parameter groups in the order they thaw; group k starts training after k * `every` steps or epochs."""

    groups: list[list[nn.Parameter]]
    every: int
    unit: Literal["steps", "epochs"]

    def thawed(self, step: int, epoch: int) -> int:
        """How many groups train at this point. Group 0 (the method's starting set) always does."""
        done = step if self.unit == "steps" else epoch
        return min(len(self.groups), 1 + done // self.every)

    def apply_(self, step: int, epoch: int) -> None:
        # Set every group, not only the newest: after a resume the model must match the schedule at once.
        thawed = self.thawed(step, epoch)
        for k, group in enumerate(self.groups):
            for p in group:
                p.requires_grad_(k < thawed)


def attach_schedule_(model: nn.Module, schedule: UnfreezeSchedule) -> None:
    """Give `model` a gradual-unfreezing schedule and put it in its starting state."""
    setattr(model, _SCHEDULE, schedule)
    schedule.apply_(0, 0)


def schedule_of(model: nn.Module) -> UnfreezeSchedule | None:
    return getattr(model, _SCHEDULE, None)


def on_step_(model: nn.Module, step: int, epoch: int) -> None:
    """Call before optimizer step `step + 1` (of epoch `epoch`): thaw what the schedule says. Idempotent."""
    schedule = schedule_of(model)
    if schedule is not None:
        schedule.apply_(step, epoch)


def optimizer_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters the optimizer must hold: trainable now, or thawed later by the schedule (tied weights once)."""
    schedule = schedule_of(model)
    later = {id(p) for group in schedule.groups for p in group} if schedule else set()
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if id(p) not in seen and (p.requires_grad or id(p) in later):
            seen.add(id(p))
            out.append((name, p))
    return out
