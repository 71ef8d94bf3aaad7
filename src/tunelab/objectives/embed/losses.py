"""Contrastive losses for embedding training.

InfoNCE with in-batch negatives is sentence-transformers' MultipleNegativesRankingLoss: anchor i is scored against
every positive of the batch (and every hard negative) by scaled cosine similarity, and the loss is the
cross-entropy of picking its own positive. `scale` is 1 / temperature (20 there, i.e. temperature 0.05).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    scale: float = 20.0,
    symmetric: bool = False,
) -> torch.Tensor:
    """Mean InfoNCE over the batch: candidates for anchor i are all B positives, then all hard negatives.

    anchors, positives: (B, D); negatives: (B·k, D) or None. `symmetric` also scores each positive against all
    anchors and averages the two directions (as CLIP does).
    """
    a = F.normalize(anchors.float(), dim=-1)
    candidates = positives if negatives is None else torch.cat([positives, negatives])
    c = F.normalize(candidates.float(), dim=-1)
    scores = scale * a @ c.T
    labels = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(scores, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, : a.shape[0]].T, labels)) / 2
    return loss


def matryoshka(
    loss_fn: Callable[..., torch.Tensor],
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Matryoshka representation learning (Kusupati et al. 2022): Σ_d w_d · loss on the first d dimensions, so
    the leading dimensions of an embedding work on their own (truncate it for cheaper search)."""
    weights = list(weights) if weights is not None else [1.0] * len(dims)
    if len(weights) != len(dims):
        raise ValueError("give one Matryoshka weight per dimension")
    total = anchors.new_zeros((), dtype=torch.float32)
    for d, w in zip(dims, weights, strict=True):
        neg = negatives[:, :d] if negatives is not None else None
        total = total + w * loss_fn(anchors[:, :d], positives[:, :d], neg, **kwargs)
    return total
