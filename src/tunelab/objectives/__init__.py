"""Objectives say what the loss is. One module per objective, one registry line each.

An objective's loss is `loss(model, batch, ctx) -> LossParts`: a *summed* loss and the count it should be divided
by, so the loop can normalise exactly over every target (token, pair, example) of an optimizer step, however it
is split into micro-batches. `ctx` is what the objective's `setup` built: a reference model, a teacher, settings.
"""

from __future__ import annotations

from typing import Union

from tunelab.objectives import (
    classify,
    contrastive,
    distill,
    dpo,
    grpo,
    kto,
    orpo,
    ppo,
    pretrain,
    rag,
    reward,
    seq_distill,
    setfit,
    sft,
)
from tunelab.objectives.base import LossParts, Objective, register

OBJECTIVES: dict[str, Objective] = {}
register(OBJECTIVES, sft.OBJECTIVE)
register(OBJECTIVES, pretrain.OBJECTIVE)
register(OBJECTIVES, distill.OBJECTIVE)
register(OBJECTIVES, seq_distill.OBJECTIVE)
register(OBJECTIVES, dpo.OBJECTIVE)
register(OBJECTIVES, orpo.OBJECTIVE)
register(OBJECTIVES, kto.OBJECTIVE)
register(OBJECTIVES, reward.OBJECTIVE)
register(OBJECTIVES, grpo.OBJECTIVE)
register(OBJECTIVES, ppo.OBJECTIVE)
register(OBJECTIVES, classify.OBJECTIVE)
register(OBJECTIVES, rag.OBJECTIVE)
register(OBJECTIVES, contrastive.OBJECTIVE)
register(OBJECTIVES, setfit.OBJECTIVE)

OBJECTIVE_CONFIGS = {name: objective.config for name, objective in OBJECTIVES.items()}
ObjectiveConfig = Union[tuple(OBJECTIVE_CONFIGS.values())]  # noqa: UP007 - built at run time from the registry

__all__ = ["OBJECTIVES", "OBJECTIVE_CONFIGS", "LossParts", "Objective", "ObjectiveConfig"]
