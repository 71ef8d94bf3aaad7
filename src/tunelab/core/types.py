"""Types that flow through every layer: a chat message, a batch of tensors, and a loss as a sum and a count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

import torch

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


def is_role(value: object) -> TypeGuard[Role]:
    """Whether `value` is one of `ROLES` (a role read from a file is any string until checked)."""
    return value in ROLES


Batch = dict[str, torch.Tensor]
"""A collated batch: tensors by name (input_ids, attention_mask, labels, ...)."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    trainable: bool = True
    """For assistant turns: whether this turn carries loss (OpenAI's per-message `weight`)."""


@dataclass
class LossParts:
    """A loss as a sum over `count` items (tokens, pairs, ...), plus `correct` for accuracy where it applies.

    The loop divides every micro-batch's sum by the count of the whole optimizer step, so accumulation and data
    parallelism give the gradient of one big batch."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor | None = None
