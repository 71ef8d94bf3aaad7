"""ORPO: odds-ratio preference optimisation (Hong et al., 2024), SFT and preference in one loss, no reference.

With a = the answer's log-probability averaged over its tokens and odds(y|x) = P/(1-P) for P = exp(a):
    L = -a_w  -  λ · log σ( log odds(y_w|x) - log odds(y_l|x) )            (Eq. 6-7)
    log odds(y|x) = a - log(1 - exp(a))
The first term is the chosen answer's token-mean NLL; TRL instead averages it over all chosen tokens of the batch
(prompt included), so the two agree on the odds-ratio term and on equal-length, prompt-masked answers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.objectives.base import Objective, Setup
from tunelab.objectives.lm import sequence_logps
from tunelab.objectives.pairs import collate_pairs, count_pairs, pair_length, prepare_pairs


class ORPOConfig(Section):
    name: Literal["orpo"] = "orpo"
    beta: float = Field(default=0.1, gt=0)
    """Weight λ of the odds-ratio term against the chosen answer's NLL (the paper uses 0.1-0.25)."""


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and far below it (Mächler, 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def odds_ratio_terms(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor) -> torch.Tensor:
    """log σ(log odds ratio) per pair, from token-mean log-probs of the answers."""
    log_odds = (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))
    return F.logsigmoid(log_odds)


def orpo_losses(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair ORPO loss: -a_w - λ log σ(log odds ratio)."""
    return -chosen_mean - beta * odds_ratio_terms(chosen_mean, rejected_mean)


def orpo_loss(model: nn.Module, batch: Batch, cfg: ORPOConfig) -> LossParts:
    logps, tokens = sequence_logps(model, batch)
    means = logps / tokens.clamp(min=1)
    chosen, rejected = means.chunk(2)
    losses = orpo_losses(chosen, rejected, cfg.beta)
    count = torch.tensor(chosen.numel(), device=logps.device)
    return LossParts(loss_sum=losses.sum(), count=count, correct=(chosen > rejected).sum())


OBJECTIVE = Objective(
    name="orpo",
    loss=orpo_loss,
    config=ORPOConfig,
    prepare=prepare_pairs,
    setup=lambda cfg, args: Setup(args.model, cfg),
    collate=collate_pairs,
    length=pair_length,
    count=count_pairs,
    metric="pair_acc",
    perplexity=False,
)
