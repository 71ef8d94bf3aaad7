"""Sentence vectors from an encoder: mean of the token states over the attention mask, L2-normalised.

The pooling sentence-transformers uses for the MiniLM family (`1_Pooling/config.json` of the embedded model says
mean), so vectors match theirs; `tunelab.serve.embeddings` pools the same way for the `/v1/embeddings` route.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token states -> (B, D): the mean over positions where the mask is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed_batch(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled (not normalised) vectors of a tokenized batch, with gradients when grad mode is on."""
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return mean_pool(hidden.float(), attention_mask)


@torch.no_grad()
def encode(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    normalize: bool = True,
    dims: int | None = None,
) -> torch.Tensor:
    """(len(texts), D) vectors, in order; `dims` keeps the first dims (Matryoshka truncation) before normalising."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            out.append(embed_batch(model, batch["input_ids"], batch["attention_mask"]))
    finally:
        model.train(was_training)
    vectors = torch.cat(out) if out else torch.zeros(0, int(model.config.hidden_size))
    if dims is not None:
        vectors = vectors[:, :dims]
    return F.normalize(vectors, dim=-1) if normalize else vectors
