"""Contrastive fine-tuning of an encoder on (anchor, positive[, negative]) pairs, outside a run folder.

A run folder trains with `objective: contrastive` (`tunelab.objectives.contrastive`) through the shared loop;
`train_embedder` runs the same loss in a small in-memory loop (AdamW, linear warmup and decay, no accumulation,
no checkpoints) for library use on a model already loaded, such as the SetFit path (`tunelab.fewshot.setfit`).

In-batch negatives are only as good as the batch: two anchors sharing one positive text turn each other's
positive into a false negative. `pair_batches` keeps duplicate positives out of a batch where it can.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.data.records import Example
from tunelab.objectives.embed.contrastive import ContrastiveConfig, collate_embed, contrastive_loss, tokenize_embed_pair


def collate_pairs(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int = 128
) -> dict[str, torch.Tensor]:
    """`{role}_input_ids` / `{role}_attention_mask` for anchor, positive and (when every example has one) negative."""
    items = [tokenize_embed_pair(ex, tokenizer, max_length) for ex in examples]
    pad = cast(int | None, tokenizer.pad_token_id)  # one token's id (transformers types it for token lists too)
    return collate_embed(items, pad if pad is not None else 0)


def pair_batches(examples: Sequence[Example], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of indices in which no positive text appears twice (as far as the data allows)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    open_batches: list[tuple[list[int], set[str]]] = []
    for i in order:
        text = examples[i].positive
        target = next((b for b in open_batches if text not in b[1]), None)
        if target is None:
            target = ([], set())
            open_batches.append(target)
        target[0].append(i)
        target[1].add(text)
        if len(target[0]) == batch_size:
            batches.append(target[0])
            open_batches.remove(target)
    batches.extend(b for b, _ in open_batches if len(b) > 1)  # a batch of one has no negatives to learn from
    return batches


def train_embedder(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    scale: float = 20.0,
    matryoshka_dims: Sequence[int] | None = None,
    max_length: int = 128,
    max_steps: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Fine-tune `model` (an encoder) in place with in-batch-negatives InfoNCE; it is left in eval mode.
    Returns the loss per step."""
    missing = [ex.origin or str(i) for i, ex in enumerate(examples) if not (ex.anchor and ex.positive)]
    if missing:
        raise DataError(
            f"{len(missing)} example(s) lack an anchor or a positive (first: {missing[0]}); embedding training "
            "needs pairs data: rows with 'anchor' and 'positive' (and optionally 'negative')."
        )
    settings = ContrastiveConfig(scale=scale, matryoshka_dims=list(matryoshka_dims or []))
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    per_epoch = [pair_batches(examples, batch_size, seed + e) for e in range(epochs)]
    total = max_steps or sum(len(b) for b in per_epoch)
    warmup = int(warmup_ratio * total)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    history: list[dict[str, float]] = []
    model.train()
    for epoch, batches in enumerate(per_epoch):
        for indices in batches:
            if len(history) >= total:
                break
            batch = collate_pairs(tokenizer, [examples[i] for i in indices], max_length)
            parts = contrastive_loss(model, {k: v.to(device) for k, v in batch.items()}, settings)
            loss = parts.loss_sum / parts.count
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"step": len(history) + 1, "epoch": epoch, "loss": loss.item()})
            if not math.isfinite(history[-1]["loss"]):
                raise FloatingPointError(f"embedding loss became {loss.item()} at step {len(history)}")
    model.eval()
    return history
