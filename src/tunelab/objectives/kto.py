"""KTO: Kahneman-Tversky optimisation (Ethayarajh et al., 2024) on unpaired good and bad answers.

With r = log π(y|x) - log π_ref(y|x) and z0 an estimate of KL(π || π_ref) (mean of r over answers given to the
wrong prompts, clamped at 0 and not differentiated), each example's loss is (Eq. 7)
    desirable:   λ_D · (1 - σ(β (r - z0)))
    undesirable: λ_U · (1 - σ(β (z0 - r)))
Examples come from preference records, each giving one desirable (chosen) and one undesirable (rejected)
answer; the loss treats them independently, so the two halves of a pair need not share a batch. As in TRL, the
mismatched answer of each example is fixed once (the answer of the previous example after a seeded shuffle).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal, cast

import torch
from pydantic import Field
from torch import nn

from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.pipeline import PreparedData
from tunelab.objectives.base import Objective, PrepareArgs, Setup, SetupArgs
from tunelab.objectives.lm import sequence_logps
from tunelab.objectives.pairs import PairItem, collate_rows, prepare_pairs
from tunelab.objectives.reference import Reference, ReferenceKind, setup_reference


class KTOConfig(Section):
    name: Literal["kto"] = "kto"
    beta: float = Field(default=0.1, gt=0)
    """Strength of the pull toward the reference (β)."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """λ_D: weight of desirable examples' losses (raise it when they are scarcer than undesirable ones)."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """λ_U: weight of undesirable examples' losses."""
    reference: ReferenceKind = "auto"
    """`adapter_disabled` (LoRA/DoRA/IA3: no second copy), `copy` (a frozen copy), `auto`: the first when valid."""
    reference_model: str | None = None
    """Another model as the reference (a model source or a finished run folder); overrides `reference`."""
    precompute_reference: bool = False
    """Compute the reference log-probs once before training (then free the reference)."""


@dataclass
class UnpairedItem:
    """A prompt, an answer rated desirable or not, and another example's answer for the KL estimate."""

    prompt: list[int]
    answer: list[int]
    desirable: bool
    mismatched: list[int]
    origin: str = ""
    ref: tuple[float, float] | None = None
    """Precomputed reference log-probs of (answer, mismatched answer)."""


def unpaired_items(pairs: list[PairItem], seed: int) -> list[UnpairedItem]:
    """Each pair as a desirable and an undesirable example, each given another example's answer for z0."""
    items = [(p.prompt, a, good, p.origin) for p in pairs for a, good in ((p.chosen, True), (p.rejected, False))]
    random.Random(seed).shuffle(items)
    return [
        UnpairedItem(prompt, answer, good, items[i - 1][1], origin)
        for i, (prompt, answer, good, origin) in enumerate(items)
    ]


def prepare_unpaired(args: PrepareArgs[KTOConfig]) -> PreparedData:
    pairs = prepare_pairs(args)
    train, val = cast(list[PairItem], pairs.train), cast(list[PairItem], pairs.val)  # what prepare_pairs makes
    return replace(pairs, train=unpaired_items(train, args.seed), val=unpaired_items(val, args.seed))


def collate_unpaired(items: list[UnpairedItem], pad_id: int) -> Batch:
    """B rows (prompt, answer), then B rows (prompt, mismatched answer); `desirable` (B) marks the good ones."""
    rows = [(i.prompt, i.answer) for i in items] + [(i.prompt, i.mismatched) for i in items]
    batch = collate_rows(rows, pad_id)
    batch["desirable"] = torch.tensor([i.desirable for i in items])
    refs = [i.ref for i in items if i.ref is not None]
    if items and len(refs) == len(items):
        batch["ref_logps"] = torch.tensor([r[0] for r in refs] + [r[1] for r in refs])
    return batch


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example losses (Eq. 7) from summed log-probs of the answers and of the mismatched answers."""
    z0 = (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
    ratio = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    return torch.where(desirable.bool(), good, bad)


def kto_loss(model: nn.Module, batch: Batch, ctx: tuple[KTOConfig, Reference]) -> LossParts:
    cfg, reference = ctx
    n = batch["desirable"].numel()
    logps, _ = sequence_logps(model, _rows(batch, 0, n))
    with torch.no_grad():  # z0 is a baseline, not a target: no gradient flows through it
        kl_logps, _ = sequence_logps(model, _rows(batch, n, 2 * n))
    ref = reference.logps(model, batch).to(logps.dtype)
    losses = kto_losses(
        logps, ref[:n], kl_logps, ref[n:], batch["desirable"], cfg.beta, cfg.desirable_weight, cfg.undesirable_weight
    )
    # An answer is judged right when its implicit reward β·r is on its label's side of the baseline.
    above = (logps - ref[:n]).detach() > 0
    correct = (above == batch["desirable"].bool()).sum()
    return LossParts(loss_sum=losses.sum(), count=torch.tensor(n, device=logps.device), correct=correct)


def _rows(batch: Batch, start: int, end: int) -> Batch:
    return {k: batch[k][start:end] for k in ("input_ids", "attention_mask", "labels")}


def _setup(cfg: KTOConfig, args: SetupArgs) -> Setup[tuple[KTOConfig, Reference]]:
    reference, data = setup_reference(cfg, args, collate_unpaired)
    return Setup(args.model, (cfg, reference), data=data)


OBJECTIVE = Objective(
    name="kto",
    loss=kto_loss,
    config=KTOConfig,
    prepare=prepare_unpaired,
    setup=_setup,
    collate=collate_unpaired,
    length=lambda i: len(i.prompt) + max(len(i.answer), len(i.mismatched)),
    count=lambda batch: int(batch["desirable"].numel()),
    metric="acc",
    perplexity=False,
)
