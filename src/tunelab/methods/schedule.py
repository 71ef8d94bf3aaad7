"""Method state that changes during training: gradual unfreezing (ULMFiT), driven by the loop's step counter.

A method that unfreezes over time returns an `UnfreezeSchedule` from its `step_hooks`: the loop calls
`on_step_start(step, epoch)` before every optimizer step, and builds the optimizer over the trainable parameters
plus `dormant_parameters()`, the weights that are still frozen but will train later (a parameter without a
gradient is skipped by every torch optimizer, so holding them costs nothing until they thaw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from tunelab.methods.base import StepHook


@dataclass
class UnfreezeSchedule(StepHook):
    """Parameter groups in the order they thaw; group k starts training after k * `every` steps or epochs."""

    groups: list[list[nn.Parameter]]
    every: int
    unit: Literal["steps", "epochs"]

    def thawed(self, step: int, epoch: int) -> int:
        """How many groups train at this point. Group 0 (the method's starting set) always does."""
        done = step if self.unit == "steps" else epoch
        return min(len(self.groups), 1 + done // self.every)

    def on_step_start(self, step: int, epoch: int) -> None:
        """Before optimizer step `step + 1` (of epoch `epoch`): thaw what the schedule says. Idempotent."""
        # Set every group, not only the newest: after a resume the model must match the schedule at once.
        thawed = self.thawed(step, epoch)
        for k, group in enumerate(self.groups):
            for p in group:
                p.requires_grad_(k < thawed)

    def dormant_parameters(self) -> list[nn.Parameter]:
        """The weights that thaw later."""
        return [p for group in self.groups[1:] for p in group]
