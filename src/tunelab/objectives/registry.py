"""The objectives, one line each. Each objective module exposes `OBJECTIVE = Objective(name=..., loss=..., ...)`."""

from __future__ import annotations

from typing import Any, Union

from tunelab.core.registry import register
from tunelab.objectives import dpo, kto, orpo, pretrain, reward, sft
from tunelab.objectives.base import Objective
from tunelab.objectives.classify import objective as classify
from tunelab.objectives.distill import objective as distill
from tunelab.objectives.distill import sequence as seq_distill
from tunelab.objectives.embed import contrastive, setfit
from tunelab.objectives.rag import objective as rag
from tunelab.objectives.rl import grpo, ppo

OBJECTIVES: dict[str, Objective[Any, Any]] = {}
for _objective in (
    sft.OBJECTIVE,
    pretrain.OBJECTIVE,
    distill.OBJECTIVE,
    seq_distill.OBJECTIVE,
    dpo.OBJECTIVE,
    orpo.OBJECTIVE,
    kto.OBJECTIVE,
    reward.OBJECTIVE,
    grpo.OBJECTIVE,
    ppo.OBJECTIVE,
    classify.OBJECTIVE,
    rag.OBJECTIVE,
    contrastive.OBJECTIVE,
    setfit.OBJECTIVE,
):
    register(OBJECTIVES, _objective.name, _objective, "objective")

OBJECTIVE_CONFIGS = {name: objective.config for name, objective in OBJECTIVES.items()}
ObjectiveConfig = Union[tuple(OBJECTIVE_CONFIGS.values())]  # noqa: UP007 - built at run time from the registry
