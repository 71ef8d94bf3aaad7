"""Causal attention for short rows on the CPU: plain matrix products instead of the flash kernel.

torch's CPU flash-attention kernel walks the sequence in blocks; for the short rows of instruction data (under
~128 tokens) its backward is slow: on SmolLM2-135M's shapes (9 query heads, 3 key/value heads, head size 64,
bf16, 2 threads) one forward and backward over 8 rows of 90 tokens took 11.8 ms against 5.0 ms here, and
attention was 28% of a LoRA training step's CPU time. Here the scores are one bf16 matrix product per key/value
head (the query heads that share it stacked along the rows, so keys and values are never copied out), the
softmax runs in fp32, and the backward recomputes the probabilities from the saved queries and keys instead of
keeping them: the same tensors are kept for the backward as the flash kernel keeps. Past 128 tokens the flash
kernel, which skips the masked half, is faster and this hands over to it.

`use_short_attention_(model)` registers it as an attention implementation ("tunelab_sdpa") and selects it for
the causal decoder families whose attention classes are listed here, when they run on SDPA. A sliding window at
least as long as the row changes nothing and is run here. Anything it does not handle goes to transformers' own
SDPA function unchanged: a mask (left padding, packed rows), a KV cache (queries shorter than keys), dropout, a
window shorter than the row, soft-capping, attention sinks, and non-causal attention. Models transformers runs
without SDPA (Gemma 2, whose soft-capped scores SDPA cannot compute) and encoders are left as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "tunelab_sdpa"
MAX_TOKENS = 128
"""The longest rows this runs; longer ones go to the flash kernel (break-even measured near 160 tokens)."""
ATTENTION_CLASSES = {
    "LlamaAttention",
    "MistralAttention",
    "Qwen2Attention",
    "Qwen3Attention",
    "Gemma3Attention",
    "Phi3Attention",
    "Olmo2Attention",
    "GPTNeoXAttention",
    "MixtralAttention",
    "Qwen2MoeAttention",
    "Qwen3MoeAttention",
    "OlmoeAttention",
}
"""Attention classes that call the attention function with plain causal queries, keys and values (grouped or not)."""


def _probs(rows: torch.Tensor, key: torch.Tensor, scale: float, length: int) -> torch.Tensor:
    """Causal softmax(QK^T) in fp32 for queries stacked per key/value head ([B, KV, G*T, D] x [B, KV, T, D])."""
    scores = torch.matmul(rows, key.transpose(-1, -2)).float().mul_(scale)
    position = torch.arange(rows.shape[-2], device=rows.device) % length
    future = torch.arange(length, device=rows.device)[None, :] > position[:, None]
    return torch.softmax(scores.masked_fill_(future, float("-inf")), dim=-1)


def _compute_dtype(query: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """One dtype for the products of both passes. Queries and keys may come out of the rotary embedding in fp32
    beside bf16 values (a fully trained model keeps fp32 hidden states under bf16 autocast): under autocast its
    dtype, as SDPA would run; otherwise the wider of the two."""
    if query.dtype == value.dtype:
        return value.dtype
    device = query.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(query.dtype, value.dtype)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        batch, heads, length, size = query.shape
        ctx.dtypes = query.dtype, key.dtype, value.dtype
        dtype = _compute_dtype(query, value)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        rows = query.reshape(batch, key.shape[1], -1, size)  # head h = kv * groups + g, as repeat_kv lays them out
        out = torch.matmul(_probs(rows, key, scale, length).to(dtype), value)
        ctx.save_for_backward(rows, key, value)
        ctx.scale, ctx.shape = scale, query.shape
        return out.view(batch, heads, length, size)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        rows, key, value = ctx.saved_tensors
        batch, heads, length, size = ctx.shape
        probs = _probs(rows, key, ctx.scale, length)
        grad_rows = grad.reshape(rows.shape).to(rows.dtype)
        grad_value = torch.matmul(probs.to(rows.dtype).transpose(-1, -2), grad_rows)
        grad_probs = torch.matmul(grad_rows, value.transpose(-1, -2)).float()
        # d softmax: P * (dP - rowsum(dP * P)), then the scale of the scores.
        grad_scores = probs.mul_(grad_probs.sub_((grad_probs * probs).sum(-1, keepdim=True))).mul_(ctx.scale)
        grad_scores = grad_scores.to(rows.dtype)
        grad_query = torch.matmul(grad_scores, key).view(batch, heads, length, size)
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), rows)
        query_dtype, key_dtype, value_dtype = ctx.dtypes
        return grad_query.to(query_dtype), grad_key.to(key_dtype), grad_value.to(value_dtype), None


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of `query` [B, H, T, D] over `key`/`value` [B, KV, T, D] (H a multiple of KV), [B, H, T, D]."""
    return _CausalAttention.apply(query, key, value, scale)


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; hands what it does not handle to the SDPA function."""
    length = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    unusual = any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias", "cache"))
    window = kwargs.get("sliding_window")
    if (
        attention_mask is not None
        or not causal
        or dropout
        or unusual
        or (window is not None and window < length)
        or not 1 < length <= MAX_TOKENS
        or key.shape[2] != length
        or query.shape[1] % key.shape[1]
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return causal_attention(query, key, value, scale).transpose(1, 2).contiguous(), None


def use_short_attention_(model: nn.Module) -> bool:
    """Select this attention for `model` when its attention class is listed and it runs on SDPA; returns whether
    it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = getattr(model, "config", None)
    kinds = {type(m).__name__ for m in model.modules()}
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or not kinds & ATTENTION_CLASSES:
        return False
    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the masks SDPA gets (none when causal alone will do)
    config._attn_implementation = NAME
    return True
