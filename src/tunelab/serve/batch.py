"""The running batch of a continuous-batching decoder: left-padded rows sharing one KV cache.

Rows join (`join`) after their prompts are prefilled and leave (`keep`) when they finish, between decode steps,
so a new request never waits for the longest one in flight. transformers' `generate` cannot do this: its batch is
fixed for the whole call. Everything here is plain tensor bookkeeping around the model's own forward pass:

- the cache holds, per layer, keys and values of shape [rows, kv_heads, columns, head_dim];
- `mask` [rows, columns] marks real tokens (1) and left padding (0); padding is never attended to;
- `positions` [rows] is each row's next RoPE position (its count of real tokens), passed explicitly, so a row's
  positions do not depend on how much padding the batch gave it.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import DynamicCache, DynamicLayer


def prefill(
    model: nn.Module, prompts: list[list[int]], pad_id: int, extra: dict[str, Any]
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """Run `prompts` (left-padded together) through the model: (last logits [n, vocab], cache, mask)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if keeps_last_logits(model):  # only the last position's logits are used: skip the LM head on the others
        extra = {**extra, "logits_to_keep": 1}
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=DynamicCache(),
        use_cache=True,
        **extra,
    )
    return out.logits[:, -1, :].float(), out.cache, mask


def keeps_last_logits(model: nn.Module) -> bool:
    """Whether the causal LM under any adapter wrapper takes `logits_to_keep` (transformers' LMs do; a remote-code
    model may not). On a 32-prompt prefill of SmolLM2 the LM head over every position is ~15% of the time."""
    base = cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(cast(Any, base).forward).parameters


class Batch:
    """Rows decoding together. Row order matches the caller's list of requests; `keep` and `join` keep it so."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append freshly prefilled rows (their cache and mask), padding the shorter side on the left."""
        new_layers = _layers(cache)
        positions = mask.sum(-1)
        if self.mask is None:
            self.layers, self.mask, self.positions = new_layers, mask, positions
            return
        assert self.positions is not None  # set with the mask
        width = max(self.mask.shape[1], mask.shape[1])
        old = [(_pad_left(k, width, 2), _pad_left(v, width, 2)) for k, v in self.layers]
        new = [(_pad_left(k, width, 2), _pad_left(v, width, 2)) for k, v in new_layers]
        self.layers = [(torch.cat([ok, nk]), torch.cat([ov, nv])) for (ok, ov), (nk, nv) in zip(old, new, strict=True)]
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop leading columns that are padding in every row."""
        if not rows:
            self.layers, self.mask, self.positions = [], None, None
            return
        assert self.mask is not None and self.positions is not None  # rows to keep: the batch has some
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0]) if mask.any() else 0
        self.mask = mask[:, first:]
        self.positions = self.positions.index_select(0, index)
        self.layers = [
            (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:]) for k, v in self.layers
        ]

    def step(self, tokens: list[int], extra: dict[str, Any]) -> torch.Tensor:
        """Feed one token per row; returns next-token logits [rows, vocab] (fp32)."""
        assert self.mask is not None and self.positions is not None
        device = self.mask.device
        ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        config = cast(PreTrainedConfig, self.model.config)  # the model served is a transformers model
        cache = DynamicCache(ddp_cache_data=self.layers, config=config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=self.positions[:, None],
            cache=cache,
            use_cache=True,
            **extra,
        )
        self.layers = _layers(out.cache)
        self.mask = mask
        self.positions = self.positions + 1
        return out.logits[:, -1, :].float()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # A decoder's attention layers, each filled by the forward that returned `cache`.
    layers = cast(list[DynamicLayer], cache.layers)
    return [(cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)) for layer in layers]


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
