"""Objectives say what the loss is. One module per objective, one registry line each.

An objective is `loss(model, batch) -> LossParts`: a *summed* loss and the count it should be divided by, so the
loop can normalise exactly over every target token of an optimizer step, however it is split into micro-batches.
"""

from __future__ import annotations

from tunelab.objectives import sft
from tunelab.objectives.base import LossParts, Objective, register

OBJECTIVES: dict[str, Objective] = {}
register(OBJECTIVES, sft.OBJECTIVE)

__all__ = ["OBJECTIVES", "LossParts", "Objective"]
