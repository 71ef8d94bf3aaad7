"""What an objective is, and the causal-LM maths the language-modelling objectives share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.data.tokenize import IGNORE


@dataclass
class LossParts:
    """A loss as a sum over `count` items (tokens, pairs, ...), plus `correct` for accuracy where it applies."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor | None = None


@dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], LossParts]


def register(registry: dict[str, Objective], objective: Objective) -> None:
    """Add an objective, refusing a second entry under the same name."""
    if objective.name in registry:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    registry[objective.name] = objective


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The body and output head of a causal LM, or None when the forward must run whole (e.g. prompt tuning)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and (peft_config.is_prompt_learning or peft_config.is_adaption_prompt):
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return (decoder, head) if decoder is not None and head is not None else None


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossParts:
    """Summed next-token cross-entropy over positions whose label is not IGNORE.

    The output head runs only on those positions: with a 49k vocabulary, full logits for every prompt token
    would cost more memory and time than the whole transformer body for short answers.
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    parts = _decoder_and_head(model)
    if parts is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        selected_logits = logits[keep]
    else:
        decoder, head = parts
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        selected_logits = head(hidden[:, :-1][keep])
    targets = labels[keep]
    loss_sum = F.cross_entropy(selected_logits.float(), targets, reduction="sum")
    correct = (selected_logits.argmax(-1) == targets).sum()
    return LossParts(loss_sum=loss_sum, count=keep.sum(), correct=correct)
