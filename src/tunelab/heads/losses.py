"""Head losses as sums plus counts (`LossParts`), so the loop normalises them like every other objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.objectives.base import LossParts

IGNORE = -100
"""Token label that takes no part in the loss (padding, special tokens, later sub-tokens of a word)."""


def sequence_loss(
    logits: torch.Tensor, labels: torch.Tensor, regression: bool = False, label_smoothing: float = 0.0
) -> LossParts:
    """Cross-entropy over classes (logits B x C, labels B), or squared error (logits B x 1, labels B floats)."""
    if regression:
        loss_sum = F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum")
        return LossParts(loss_sum=loss_sum, count=torch.tensor(labels.numel(), device=labels.device))
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=label_smoothing)
    correct = (logits.argmax(-1) == labels).sum()
    return LossParts(loss_sum=loss_sum, count=torch.tensor(labels.numel(), device=labels.device), correct=correct)


def token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> LossParts:
    """Cross-entropy per token (logits B x T x C, labels B x T) over tokens whose label is not IGNORE."""
    keep = labels != IGNORE
    selected = logits[keep].float()
    targets = labels[keep]
    loss_sum = F.cross_entropy(selected, targets, reduction="sum", label_smoothing=label_smoothing)
    return LossParts(loss_sum=loss_sum, count=keep.sum(), correct=(selected.argmax(-1) == targets).sum())


def align_word_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Token labels from word labels (a fast tokenizer's `word_ids()`): the first sub-token of each word gets the
    word's label; special tokens and later sub-tokens get IGNORE, so each word counts once."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE if word is None or word == previous else word_labels[word])
        previous = word
    return out
