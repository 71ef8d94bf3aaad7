"""PPO for language models (Ouyang et al., 2022; the "N implementation details" of Huang et al., 2024), online.

The policy answers each prompt; a value head on the policy's hidden states estimates the return before every
completion token. Per-token rewards are the KL penalty -β(log π_old - log π_ref) with the completion's score
(reward functions and/or reward model) added at its last token; GAE(γ, λ) turns them into advantages (whitened
over the rollout) and returns. The loss per completion token is
    -min(r·A, clip(r, 1-ε, 1+ε)·A)  +  c_v · ½ max((V - R)², (V_old + clip(V - V_old, ±ε_v) - R)²)
averaged over the completion, then over completions. A rollout serves `updates_per_rollout` loss calls (PPO's
epochs; keep training.grad_accum at 1). The value head trains with the policy and is not saved.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from pydantic import Field
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.types import Batch, LossParts
from tunelab.data.tokenize import IGNORE
from tunelab.models.parts import decoder_and_head, input_embeddings
from tunelab.objectives.base import Objective, Setup, SetupArgs
from tunelab.objectives.lm import selected_hidden
from tunelab.objectives.rl.grpo import (
    RLContext,
    RLSettings,
    clipped_policy_loss,
    greedy_reward,
    next_rollout,
    rewards_of,
    setup_rl,
)
from tunelab.objectives.rl.rollout import Rollout, collate_prompts, gae, masked_rows, prepare_prompts


class PPOConfig(RLSettings):
    name: Literal["ppo"] = "ppo"
    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount per token."""
    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE λ: 0 trusts the value head (low variance), 1 the sampled returns (no bias)."""
    value_coef: float = Field(default=0.1, ge=0)
    """Weight c_v of the value loss."""
    value_clip: float = Field(default=0.2, gt=0)
    """ε_v: how far a value prediction may move from the rollout's before its loss stops counting."""
    samples_per_prompt: int = Field(default=1, ge=1)
    """Completions sampled per prompt."""


class PolicyWithValue(nn.Module):
    """The policy (the method-applied model) and a scalar value head on its last hidden states."""

    def __init__(self, model: nn.Module, hidden: int) -> None:
        super().__init__()
        self.model = model
        self.value_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.value_head.weight, std=1 / (hidden + 1))
        nn.init.zeros_(self.value_head.bias)


def logps_and_values(model: PolicyWithValue, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per completion token (flat): log π of the token and the value of the state before it; and their rows."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    found = selected_hidden(model.model, batch, keep)
    assert found is not None  # _setup refuses a model without a separate body and head
    hidden, head = found
    logps = head(hidden).float().log_softmax(-1).gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
    # fp32 out whatever autocast made of the head's matmul: GAE and the value loss add up many small terms.
    values = model.value_head(hidden.float()).float().squeeze(-1)
    return logps, values, keep.nonzero()[:, 0]


def _extras(ctx: RLContext):
    def extras(model: PolicyWithValue, rollout: Rollout, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = ctx.cfg
        scores = rewards_of(ctx, rollout, batch["index"].cpu()).to(batch["input_ids"].device)
        with torch.no_grad():
            old_logps, old_values, _ = logps_and_values(model, rollout.batch)
            ref = ctx.reference.token_logps(model.model, rollout.batch) if ctx.reference is not None else old_logps
        keep = rollout.batch["labels"][:, 1:] != IGNORE
        rewards = torch.zeros(keep.shape, device=keep.device)
        rewards[keep] = -cfg.beta * (old_logps - ref)
        last = keep.long().cumsum(1).argmax(1)  # position of each row's last completion token
        rewards[torch.arange(keep.size(0)), last] += scores
        values = torch.zeros(keep.shape, device=keep.device)
        values[keep] = old_values
        advantages = gae(rewards, values, keep.float(), cfg.gamma, cfg.lam)[keep]
        returns = advantages + old_values
        if advantages.numel() > 1:  # whitened over the rollout: a steady step size whatever the reward scale
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return {"old_logps": old_logps, "old_values": old_values, "advantages": advantages, "returns": returns,
                "rewards": scores}  # fmt: skip

    return extras


def ppo_loss(model: nn.Module, batch: Batch, ctx: RLContext) -> LossParts:
    assert isinstance(model, PolicyWithValue)
    if not (model.training and torch.is_grad_enabled()):
        return greedy_reward(model.model, batch, ctx)
    cfg = ctx.cfg
    rollout = next_rollout(model, batch, ctx, cfg.samples_per_prompt, _extras(ctx), policy=model.model)
    x = rollout.extras
    logps, values, rows = logps_and_values(model, rollout.batch)
    policy = clipped_policy_loss(logps, x["old_logps"], x["advantages"], cfg.clip)
    clipped = x["old_values"] + (values - x["old_values"]).clamp(-cfg.value_clip, cfg.value_clip)
    value = 0.5 * torch.maximum((values - x["returns"]) ** 2, (clipped - x["returns"]) ** 2)
    losses = masked_rows(policy + cfg.value_coef * value, rows, rollout.batch["input_ids"].size(0))
    n, prompts = cfg.samples_per_prompt, batch["input_ids"].size(0)
    return LossParts(loss_sum=losses.sum() / n, count=torch.tensor(prompts), correct=x["rewards"].sum() / n)


def _setup(cfg: PPOConfig, args: SetupArgs) -> Setup[RLContext]:
    if decoder_and_head(args.model) is None:
        raise ConfigError("objective ppo needs a model whose forward runs whole (not prompt or prefix tuning).")
    hidden = cast(nn.Embedding, input_embeddings(args.model)).embedding_dim
    return Setup(PolicyWithValue(args.model, hidden).to(args.device), setup_rl(cfg, args))


def _body(model: nn.Module) -> nn.Module:
    assert isinstance(model, PolicyWithValue)
    return model.model


OBJECTIVE = Objective(
    name="ppo",
    loss=ppo_loss,
    config=PPOConfig,
    prepare=prepare_prompts,
    setup=_setup,
    collate=collate_prompts,
    length=lambda item: len(item.prompt),
    count=lambda batch: int(batch["input_ids"].size(0)),
    metric="reward",
    perplexity=False,
    body=_body,
)
