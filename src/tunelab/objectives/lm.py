"""The causal-LM maths the language-modelling objectives share: next-token logits only where there are labels,
the training forward's inputs, the summed cross-entropy, and per-token / per-sequence log-probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.core.types import Batch, LossParts
from tunelab.data.tokenize import IGNORE, Tokenized, model_inputs
from tunelab.models.parts import decoder_and_head


@dataclass(frozen=True)
class LMContext:
    """What next-token objectives without a setup of their own need while training."""

    label_smoothing: float = 0.0
    loss_chunk_tokens: int = 0
    """`training.loss_chunk_tokens`: above this many targets in a micro-batch the loss runs in chunks (0: never)."""


def target_tokens(batch: Batch) -> int:
    """How many next-token targets a causal-LM batch holds (the count its loss is normalised by)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def token_length(item: Tokenized) -> int:
    return len(item.input_ids)


def selected_hidden(model: nn.Module, batch: Batch, keep: torch.Tensor) -> tuple[torch.Tensor, nn.Module] | None:
    """The body's last hidden states at the positions `keep` (B x T-1, aligned with labels[:, 1:]) and the output
    head that reads them; None when the forward must run whole (prompt tuning)."""
    parts = decoder_and_head(model)
    if parts is None:
        return None
    decoder, head = parts
    return decoder(**causal_inputs(batch)).last_hidden_state[:, :-1][keep], head


def selected_logits(model: nn.Module, batch: Batch, keep: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the positions `keep` (B x T-1, aligned with labels[:, 1:]) only.

    The output head runs only on those positions: with a 49k vocabulary, full logits for every prompt token
    would cost more memory and time than the whole transformer body for short answers.
    """
    found = selected_hidden(model, batch, keep)
    if found is None:
        # Prompt tuning prepends num_virtual_tokens positions to the output; the last T are the input's own.
        logits = model(**model_inputs(batch), use_cache=False).logits[:, -batch["input_ids"].shape[1] :]
        return logits[:, :-1][keep]
    hidden, head = found
    return head(hidden)


def causal_inputs(batch: Batch) -> dict[str, Any]:
    """The keyword arguments of a causal decoder's training forward.

    No KV cache: training never reuses it, and transformers finds packed sequences (positions restarting) only
    when no cache is passed; with one, packed examples would attend to each other. No padding mask on
    right-padded rows: causal attention alone already keeps every real token off the padding after it, and
    without the mask SDPA runs its causal kernel (no T x T mask, grouped key/value heads not copied out to every
    query head). Pad positions compute values that no target, hidden state or attention row at a target reads.
    """
    inputs = {**model_inputs(batch), "use_cache": False}
    if right_padded(inputs.get("attention_mask")):
        del inputs["attention_mask"]
    return inputs


def right_padded(mask: torch.Tensor | None) -> bool:
    """Whether every row of an attention mask is ones then zeros (padding only after the tokens)."""
    return mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all())


def causal_lm_loss(model: nn.Module, batch: Batch, ctx: Any = None) -> LossParts:
    """Summed next-token cross-entropy over positions whose label is not IGNORE.

    With `ctx.label_smoothing` (an `LMContext`) the targets are smoothed while the model trains; in eval mode the
    loss stays the plain negative log-likelihood, so validation loss and perplexity keep their meaning. With more
    targets than `ctx.loss_chunk_tokens`, the output head and the loss run chunk by chunk (`chunked_head_loss`).
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    targets = labels[keep]
    smoothing = getattr(ctx, "label_smoothing", 0.0) if model.training else 0.0
    found = selected_hidden(model, batch, keep)
    if found is None:
        loss_sum, correct = _head_loss(selected_logits(model, batch, keep), targets, smoothing)
    else:
        hidden, head = found
        loss_sum, correct = chunked_head_loss(head, hidden, targets, getattr(ctx, "loss_chunk_tokens", 0), smoothing)
    return LossParts(loss_sum=loss_sum, count=keep.sum(), correct=correct)


def _head_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed cross-entropy of `logits` (N x V) against `targets` (N), and how many are argmax-correct."""
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=smoothing)
    return loss_sum, (logits.argmax(-1) == targets).sum()


def chunked_head_loss(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int, smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_head_loss(head(hidden), targets)` computed `chunk` rows at a time, each chunk's logits recomputed in the
    backward pass (activation checkpointing) instead of kept: peak memory holds one chunk's logits (chunk x V) rather
    than all of them. A 32k-token row of a 49k-vocabulary model would otherwise hold 6 GiB of fp32 logits, and as
    much again for their gradient. Same sums and gradients as the one-piece loss, for one more head matmul. With
    `chunk` 0, or no more targets than that, it is the one-piece loss."""
    if not chunk or targets.numel() <= chunk:
        return _head_loss(head(hidden), targets, smoothing)
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, targets.numel(), chunk):
        piece, wanted = hidden[start : start + chunk], targets[start : start + chunk]
        if grad:
            part, hits = checkpoint(_chunk, head, piece, wanted, smoothing, use_reentrant=False)
        else:
            part, hits = _chunk(head, piece, wanted, smoothing)
        loss_sum, correct = loss_sum + part, correct + hits
    return loss_sum, correct


def _chunk(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _head_loss(head(hidden), targets, smoothing)


def token_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens (flat, in the row-major order of `labels[:, 1:] != IGNORE`) and the
    row each belongs to."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = selected_logits(model, batch, keep).float()
    return logits.log_softmax(-1).gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1), keep.nonzero()[:, 0]


def sequence_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the labelled tokens, and how many there are (both shape B).

    This is log π(y|x) for preference objectives: labels hold the answer tokens, IGNORE on the prompt and padding.
    """
    logps, rows = token_logps(model, batch)
    size = batch["labels"].size(0)
    sums = torch.zeros(size, device=logps.device).index_add(0, rows, logps)
    return sums, torch.bincount(rows, minlength=size)
