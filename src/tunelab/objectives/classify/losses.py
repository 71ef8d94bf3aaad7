"""Head losses as sums plus counts (`LossParts`), so the loop normalises them like every other objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.core.types import LossParts
from tunelab.data.tokenize import IGNORE  # a token label that takes no part in the loss


def sequence_loss(
    logits: torch.Tensor, labels: torch.Tensor, regression: bool = False, label_smoothing: float = 0.0
) -> LossParts:
    """Cross-entropy over classes (logits B x C, labels B), or squared error (logits B x 1, labels B floats).
    For regression `correct` counts predictions within 0.5 of the target (right once rounded, for integer scores)."""
    if regression:
        predicted = logits.squeeze(-1).float()
        loss_sum = F.mse_loss(predicted, labels.float(), reduction="sum")
        correct = ((predicted.detach() - labels.float()).abs() < 0.5).sum()
        return LossParts(loss_sum=loss_sum, count=torch.tensor(labels.numel(), device=labels.device), correct=correct)
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
