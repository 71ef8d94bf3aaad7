"""Turning per-token hidden states into one vector per sequence. Positions come from the attention mask, so
left and right padding both work (transformers' own classifiers find the last token through the pad id, which
breaks when pad and end-of-text share an id)."""

from __future__ import annotations

import torch


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position whose mask is 1."""
    positions = torch.arange(mask.size(1), device=mask.device)
    index = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), index]


def first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the first position whose mask is 1 (BERT's [CLS] under right padding)."""
    index = mask.long().argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), index]


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The average hidden state over positions whose mask is 1."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


POOLING = {"last": last_token, "cls": first_token, "mean": mean}
