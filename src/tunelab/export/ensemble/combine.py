"""Combining members' outputs: weighted logit or probability averages, and weighted majority votes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Combine = Literal["logits", "probs"]


def normalized_weights(weights: Sequence[float] | torch.Tensor | None, n: int) -> torch.Tensor:
    """Weights as a tensor summing to 1 (uniform when None); negative or all-zero weights are refused."""
    w = torch.full((n,), 1.0 / n) if weights is None else torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != n:
        raise ValueError(f"{w.numel()} weights for {n} ensemble members")
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("ensemble weights must be non-negative with a positive sum")
    return w / w.sum()


def combine_logits(logits: Sequence[torch.Tensor], weights: torch.Tensor, mode: Combine) -> torch.Tensor:
    """Members' logits (each (..., C)) -> one tensor of logits.

    `logits`: Σ w_m z_m (averaging before the softmax, a product of experts). `probs`: log Σ w_m softmax(z_m), the
    log of the averaged distribution (a mixture), returned as logits so argmax and softmax work unchanged.
    """
    stacked = torch.stack([z.float() for z in logits])
    w = weights.to(stacked.device).view(-1, *[1] * (stacked.dim() - 1))
    if mode == "logits":
        return (w * stacked).sum(0)
    # log-sum-exp keeps a member that is very sure (p ~ 1e-30 elsewhere) from underflowing the mixture.
    return torch.logsumexp(torch.log(w) + torch.log_softmax(stacked, dim=-1), dim=0)


def majority_vote(predictions: Sequence[Sequence[str]], weights: Sequence[float] | None = None) -> list[str]:
    """The label with the largest (weighted) vote per example; `predictions[m][i]` is member m's label for example i.

    A tie goes to the tied label named first in member order, so the result never depends on dict order.
    """
    w = normalized_weights(weights, len(predictions)).tolist()
    n = len(predictions[0])
    if any(len(p) != n for p in predictions):
        raise ValueError("every member must predict every example")
    out = []
    for i in range(n):
        votes: dict[str, float] = {}
        for member, weight in zip(predictions, w, strict=True):
            votes[member[i]] = votes.get(member[i], 0.0) + weight
        best = max(votes.values())
        out.append(next(member[i] for member in predictions if abs(votes[member[i]] - best) < 1e-9))
    return out
