"""Turning per-token hidden states into one vector per sequence, and sentence vectors from an encoder.

Positions come from the attention mask, so left and right padding both work (transformers' own classifiers find
the last token through the pad id, which breaks when pad and end-of-text share an id). Sentence vectors are the
mean of the token states, L2-normalised: the pooling sentence-transformers uses for the MiniLM family
(`1_Pooling/config.json` of the embedded model says mean), so they match theirs. Task heads, embedding training,
retrieval, augmentation (SMOTE's vectors) and the server's `/v1/embeddings` all pool here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.device import eval_mode, module_device
from tunelab.models.load import load_model, resolve_source, tokenizer_from_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position whose mask is 1."""
    positions = torch.arange(mask.size(1), device=mask.device)
    index = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), index]


def first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the first position whose mask is 1 (BERT's [CLS] under right padding)."""
    index = mask.long().argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), index]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token states -> (B, D): the mean over positions where the mask is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


POOLING = {"last": last_token, "cls": first_token, "mean": mean_pool}


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
    max_length: int | None = 256,
    normalize: bool = True,
    dims: int | None = None,
) -> torch.Tensor:
    """(len(texts), D) vectors, in order; `dims` keeps the first dims (Matryoshka truncation) before normalising.
    Texts are cut at `max_length` tokens (None: at the tokenizer's own limit)."""
    device = module_device(model)
    out = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                return_tensors="pt",
            ).to(device)  # fmt: skip
            out.append(embed_batch(model, batch["input_ids"], batch["attention_mask"]))
    # A transformers model (or a peft wrapper, which forwards `config`): nn.Module's type has no config.
    vectors = torch.cat(out) if out else torch.zeros(0, int(cast("PreTrainedModel", model).config.hidden_size))
    if dims is not None:
        vectors = vectors[:, :dims]
    return F.normalize(vectors, dim=-1) if normalize else vectors


def encoder_vectors(source: str, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Normalised sentence vectors of `texts` from an encoder model source (e.g. `minilm-l6`), loaded for the call;
    texts are cut at the tokenizer's own limit."""
    model_source = resolve_source(source)
    tokenizer = tokenizer_from_folder(model_source.materialize(), chat=False)
    return encode(load_model(model_source), tokenizer, texts, batch_size=batch_size, max_length=None)
