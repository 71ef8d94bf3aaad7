"""GRPO: group relative policy optimisation (Shao et al., 2024, DeepSeekMath, Eq. 3), online.

Every micro-batch of prompts is answered `num_generations` times by the current policy; each completion's reward
(Python reward functions and/or a trained reward model) minus its group's mean, over the group's std, is the
advantage of all its tokens. Per completion token, with r = π/π_old:
    -min(r·A, clip(r, 1-ε, 1+ε)·A) + β·(π_ref/π - log(π_ref/π) - 1)      (the k3 estimator of KL(π‖π_ref))
averaged over the completion's tokens, then over the group; the loop divides by the number of prompts.
A rollout serves `updates_per_rollout` consecutive loss calls (μ in the paper): the first has r = 1, the later ones
train on the same samples with the ratio clipped (keep training.grad_accum at 1 so those calls are steps).

Validation answers each prompt greedily once and reports the mean reward (`val_reward`; val_loss is its negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.models.generate import stop_token_ids
from tunelab.objectives.base import Objective, Setup, SetupArgs
from tunelab.objectives.lm import token_logps
from tunelab.objectives.reference import Reference, ReferenceKind, build_reference
from tunelab.objectives.rl.rewards import RewardModelScorer, RewardSpec, Sample, combined
from tunelab.objectives.rl.rollout import (
    PromptData,
    Rollout,
    collate_prompts,
    group_advantages,
    masked_rows,
    prepare_prompts,
    sample,
)


class RLSettings(Section):
    """Sampling and reward settings shared by GRPO and PPO."""

    rewards: list[RewardSpec] = []
    """Python reward functions and their weights, e.g. [{name: exact_match}, {name: length, target: 40, weight:
    0.2}]."""
    reward_model: str | None = None
    """A run folder trained with objective `reward` (same tokenizer as the policy); its score is added."""
    reward_model_weight: float = 1.0
    """Weight of the reward model's score in the sum."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Longest sampled completion."""
    temperature: float = Field(default=1.0, ge=0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: sample from the smallest set of tokens holding this much probability."""
    beta: float = Field(default=0.04, ge=0)
    """Weight of the KL penalty toward the reference policy (0: no reference is kept)."""
    clip: float = Field(default=0.2, gt=0)
    """ε of the clipped ratio."""
    updates_per_rollout: int = Field(default=1, ge=1)
    """Loss calls (optimizer steps at grad_accum 1) each rollout is trained on."""
    reference: ReferenceKind = "auto"
    """Reference policy for the KL penalty: `adapter_disabled` (LoRA/DoRA/IA3), `copy`, or `auto`."""
    truncated_penalty: float = Field(default=0.0, ge=0)
    """Subtracted from the reward of a completion cut off at max_new_tokens (no stop token). A cut-off text can
    score like a finished answer (a date, then text that was never generated), which teaches the policy never to
    stop; a penalty makes finishing count while cut-off samples still rank among themselves (DAPO's overlong
    penalty, Yu et al., 2025, in its simplest form)."""

    @model_validator(mode="after")
    def _some_reward(self) -> RLSettings:
        if not self.rewards and self.reward_model is None:
            raise ValueError("give `rewards` (Python reward functions) and/or a `reward_model` run folder")
        return self


class GRPOConfig(RLSettings):
    name: Literal["grpo"] = "grpo"
    num_generations: int = Field(default=4, ge=2)
    """Completions sampled per prompt (the group)."""
    scale_rewards: bool = True
    """Divide advantages by the group's standard deviation (false: Dr. GRPO, no difficulty bias)."""


@dataclass
class RLContext:
    cfg: Any
    tokenizer: Any
    samples: list[Sample]
    score_text: Any
    reward_model: RewardModelScorer | None
    reference: Reference | None
    stops: list[int]
    rollout: Rollout | None = None
    uses_left: int = 0


def rewards_of(ctx: RLContext, rollout: Rollout, index: torch.Tensor) -> torch.Tensor:
    """The weighted reward of every completion of a rollout."""
    samples = [ctx.samples[int(index[g])] for g in rollout.group]
    total = ctx.score_text(rollout.completions, samples) if ctx.score_text else torch.zeros(len(samples))
    if ctx.reward_model is not None:
        batch = {k: v.to(next(ctx.reward_model.model.parameters()).device) for k, v in rollout.batch.items()}
        scores = ctx.reward_model(batch["input_ids"], batch["attention_mask"]).cpu()
        total = total + ctx.cfg.reward_model_weight * scores
    return total - ctx.cfg.truncated_penalty * (~rollout.finished).float()


def greedy_reward(model: nn.Module, batch: Batch, ctx: RLContext) -> LossParts:
    """Validation: one greedy answer per prompt; loss is minus the summed reward, `correct` the summed reward."""
    rollout = sample(model, batch, 1, ctx.cfg.max_new_tokens, 0.0, 1.0, ctx.stops, ctx.tokenizer.pad_token_id,
                     ctx.tokenizer)  # fmt: skip
    rewards = rewards_of(ctx, rollout, batch["index"].cpu()).to(batch["input_ids"].device)
    return LossParts(loss_sum=-rewards.sum(), count=torch.tensor(rewards.numel()), correct=rewards.sum())


def next_rollout(
    model: nn.Module, batch: Batch, ctx: RLContext, n: int, extras, policy: nn.Module | None = None
) -> Rollout:
    """A fresh rollout of this batch's prompts (sampled from `policy`, by default `model`) with the objective's
    `extras(model, rollout, batch)`, or the stored rollout while it has uses left."""
    if ctx.rollout is not None and ctx.uses_left > 0:
        ctx.uses_left -= 1
        return ctx.rollout
    cfg = ctx.cfg
    rollout = sample(policy or model, batch, n, cfg.max_new_tokens, cfg.temperature, cfg.top_p, ctx.stops,
                     ctx.tokenizer.pad_token_id, ctx.tokenizer)  # fmt: skip
    rollout.batch = {k: v.to(batch["input_ids"].device) for k, v in rollout.batch.items()}
    rollout.extras = extras(model, rollout, batch)
    ctx.rollout, ctx.uses_left = rollout, cfg.updates_per_rollout - 1
    return rollout


def _grpo_extras(ctx: RLContext):
    def extras(model: nn.Module, rollout: Rollout, batch: Batch) -> dict[str, torch.Tensor]:
        rewards = rewards_of(ctx, rollout, batch["index"].cpu())
        advantages = group_advantages(rewards, ctx.cfg.num_generations, ctx.cfg.scale_rewards)
        out = {"rewards": rewards, "advantages": advantages}
        with torch.no_grad():
            # With one update per rollout the policy has not moved when the loss runs: π_old is the detached π of
            # that forward, and a separate forward here would only cost time (TRL does the same).
            if ctx.cfg.updates_per_rollout > 1:
                out["old_logps"] = token_logps(model, rollout.batch)[0]
            if ctx.reference is not None:
                out["ref_logps"] = ctx.reference.token_logps(model, rollout.batch)
        return {k: v.to(batch["input_ids"].device) for k, v in out.items()}

    return extras


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """Per token -min(r·A, clip(r, 1-ε, 1+ε)·A) with r = exp(log π - log π_old) (PPO's clipped surrogate)."""
    ratio = torch.exp(logps - old_logps)
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per token π_ref/π - log(π_ref/π) - 1: an unbiased, never negative estimate of KL(π‖π_ref) (Schulman, 2020)."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(model: nn.Module, batch: Batch, ctx: RLContext) -> LossParts:
    if not (model.training and torch.is_grad_enabled()):
        return greedy_reward(model, batch, ctx)
    cfg = ctx.cfg
    rollout = next_rollout(model, batch, ctx, cfg.num_generations, _grpo_extras(ctx))
    x = rollout.extras
    logps, rows = token_logps(model, rollout.batch)
    old_logps = x["old_logps"] if "old_logps" in x else logps.detach()
    per_token = clipped_policy_loss(logps, old_logps, x["advantages"][rows], cfg.clip)
    if cfg.beta and "ref_logps" in x:
        per_token = per_token + cfg.beta * k3_kl(logps, x["ref_logps"])
    losses = masked_rows(per_token, rows, rollout.batch["input_ids"].size(0))
    # Each prompt counts once: its group's mean loss (the loop divides by the prompts of the step).
    prompts = batch["input_ids"].size(0)
    n = cfg.num_generations
    return LossParts(loss_sum=losses.sum() / n, count=torch.tensor(prompts), correct=x["rewards"].sum() / n)


def setup_rl(cfg: RLSettings, args: SetupArgs) -> RLContext:
    """Rewards, reference and stop tokens for GRPO/PPO."""
    assert isinstance(args.data, PromptData)
    samples = args.data.samples
    score_text = combined(cfg.rewards) if cfg.rewards else None
    reward_model = (
        RewardModelScorer(cfg.reward_model, args.device, args.tokenizer.get_vocab()) if cfg.reward_model else None
    )
    reference = build_reference(args.model, args.method, cfg.reference, None, args.device) if cfg.beta else None
    return RLContext(
        cfg=cfg, tokenizer=args.tokenizer, samples=samples, score_text=score_text,
        reward_model=reward_model, reference=reference, stops=stop_token_ids(args.model, args.tokenizer),
    )  # fmt: skip


OBJECTIVE = Objective(
    name="grpo",
    loss=grpo_loss,
    config=GRPOConfig,
    prepare=prepare_prompts,
    setup=lambda cfg, args: Setup(args.model, setup_rl(cfg, args)),
    collate=collate_prompts,
    length=lambda item: len(item.prompt),
    count=lambda batch: int(batch["input_ids"].size(0)),
    metric="reward",
    perplexity=False,
)
