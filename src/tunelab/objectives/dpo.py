"""Direct Preference Optimization (Rafailov et al., 2023) and its IPO, conservative and robust variants.

With h = [log π(y_w|x) - log π_ref(y_w|x)] - [log π(y_l|x) - log π_ref(y_l|x)] per pair:
- sigmoid (DPO, Eq. 7):          -log σ(β h); with label smoothing ε (cDPO): -(1-ε) log σ(βh) - ε log σ(-βh)
- ipo (Azar et al., 2023, Eq. 17): (h' - 1/(2β))², where h' uses log-probs averaged over each answer's tokens
  (as TRL does, confirmed with the IPO authors: it keeps β comparable across answer lengths)
- robust (rDPO, Chowdhury et al., 2024): [-(1-ε) log σ(βh) + ε log σ(-βh)] / (1-2ε)
The loss is a sum over pairs, normalised by the number of pairs of the optimizer step.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.objectives.base import Objective, Setup, SetupArgs
from tunelab.objectives.lm import sequence_logps
from tunelab.objectives.pairs import collate_pairs, count_pairs, pair_length, prepare_pairs
from tunelab.objectives.reference import Reference, ReferenceKind, setup_reference


class DPOConfig(Section):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(default=0.1, gt=0)
    """Strength of the pull toward the reference (β): small lets the policy move further from it."""
    loss_type: Literal["sigmoid", "ipo", "robust"] = "sigmoid"
    """`sigmoid`: DPO (with `label_smoothing`: conservative DPO); `ipo`: squared loss toward a margin of 1/(2β);
    `robust`: rDPO, unbiased under preference labels flipped with probability `label_smoothing`."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """Assumed share of wrongly ordered pairs (ε) for the sigmoid and robust losses."""
    reference: ReferenceKind = "auto"
    """`adapter_disabled`: the trained model with its adapter off (no second copy; LoRA/DoRA/IA3); `copy`: a
    frozen copy of the starting model; `auto`: adapter_disabled when valid, else copy."""
    reference_model: str | None = None
    """Another model as the reference (a model source or a finished run folder); overrides `reference`."""
    precompute_reference: bool = False
    """Compute the reference log-probs of every pair once before training (then free the reference)."""

    @model_validator(mode="after")
    def _smoothing_has_a_loss(self) -> DPOConfig:
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("label_smoothing applies to loss_type sigmoid or robust, not ipo")
        return self


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair losses from summed log-probs (shape P each). IPO needs the answers' token counts."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if loss_type == "ipo":
        assert chosen_tokens is not None and rejected_tokens is not None, "IPO needs the answers' token counts"
        h = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        return (h - 1 / (2 * beta)) ** 2
    logits = beta * (chosen_ratio - rejected_ratio)
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    raise ValueError(f"unknown DPO loss type {loss_type!r}")


def dpo_loss(model: nn.Module, batch: Batch, ctx: tuple[DPOConfig, Reference]) -> LossParts:
    cfg, reference = ctx
    logps, tokens = sequence_logps(model, batch)
    ref = reference.logps(model, batch).to(logps.dtype)
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2)
    n_chosen, n_rejected = tokens.chunk(2)
    losses = dpo_losses(
        chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss_type, cfg.label_smoothing, n_chosen, n_rejected
    )
    # Implicit rewards β·log(π/π_ref): the pair is ranked right when the chosen answer's is higher.
    correct = ((chosen - ref_chosen) > (rejected - ref_rejected)).sum()
    return LossParts(loss_sum=losses.sum(), count=torch.tensor(chosen.numel(), device=logps.device), correct=correct)


def _setup(cfg: DPOConfig, args: SetupArgs) -> Setup[tuple[DPOConfig, Reference]]:
    reference, data = setup_reference(cfg, args, collate_pairs)
    return Setup(args.model, (cfg, reference), data=data)


OBJECTIVE = Objective(
    name="dpo",
    loss=dpo_loss,
    config=DPOConfig,
    prepare=prepare_pairs,
    setup=_setup,
    collate=collate_pairs,
    length=pair_length,
    count=count_pairs,
    metric="pair_acc",
    perplexity=False,
)
