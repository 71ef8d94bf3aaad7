"""Reward model: a scalar head on the (adapted) body, trained on preference pairs with the Bradley-Terry loss.

P(y_w ≻ y_l | x) = σ(r(x, y_w) - r(x, y_l)), so the loss per pair is -log σ(r_w - r_l) (Ouyang et al., 2022,
Eq. 1), optionally plus c·(r_w + r_l)² to keep rewards centred on zero (Eisenstein et al., 2023), as TRL does.
The head reads the hidden state of each answer's last token (the last real token of the row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.objectives.base import Objective, Setup, SetupArgs
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.heads import TaskModel, attach_head_, save_head
from tunelab.objectives.pairs import collate_pairs, count_pairs, pair_length, prepare_pairs


class RewardConfig(Section):
    name: Literal["reward"] = "reward"
    center_rewards: float = Field(default=0.0, ge=0)
    """Coefficient of the (r_chosen + r_rejected)² term that keeps rewards centred on zero (0: off)."""
    pooling: Literal["last", "mean"] = "last"
    """Which hidden state the reward head reads: the last real token (decoders) or the mean over tokens."""


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """Per-pair loss -log σ(r_w - r_l) + center·(r_w + r_l)²."""
    losses = -F.logsigmoid(chosen - rejected)
    return losses + center * (chosen + rejected) ** 2 if center else losses


def reward_loss(model: nn.Module, batch: Batch, cfg: RewardConfig) -> LossParts:
    rewards = model(batch["input_ids"], batch["attention_mask"]).squeeze(-1).float()
    chosen, rejected = rewards.chunk(2)
    losses = bradley_terry_losses(chosen, rejected, cfg.center_rewards)
    return LossParts(
        loss_sum=losses.sum(),
        count=torch.tensor(chosen.numel(), device=rewards.device),
        correct=(chosen > rejected).sum(),
    )


def _setup(cfg: RewardConfig, args: SetupArgs) -> Setup[RewardConfig]:
    head = HeadConfig(task="sequence", num_labels=1, problem="regression", pooling=cfg.pooling)
    module = attach_head_(args.model, head)
    return Setup(module, cfg, head=module.head)


def _body(model: nn.Module) -> nn.Module:
    assert isinstance(model, TaskModel)
    return model.model


def _save_head(model: nn.Module, cfg: RewardConfig, folder: Path) -> None:
    assert isinstance(model, TaskModel)
    save_head(model, folder)


OBJECTIVE = Objective(
    name="reward",
    loss=reward_loss,
    config=RewardConfig,
    prepare=prepare_pairs,
    setup=_setup,
    collate=collate_pairs,
    length=pair_length,
    count=count_pairs,
    metric="pair_acc",
    perplexity=False,
    body=_body,
    save_extra=_save_head,
)
