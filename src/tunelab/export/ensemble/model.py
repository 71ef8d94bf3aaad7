"""`EnsembleModel`: members answer together, step by step, through combined next-token distributions.

transformers' `generate` drives one model and one cache; an ensemble needs one cache per member and a combination
between them at every step, so `generate` here is a greedy loop of its own (the only decoding evaluation uses).
It accepts the keyword arguments `tunelab.eval.generate_answers` passes, so evaluation code needs no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from tunelab.export.ensemble.combine import Combine, combine_logits, normalized_weights

if TYPE_CHECKING:
    from peft import PeftModel


class EnsembleModel(nn.Module):
    """Several models, or several adapters on one peft-wrapped base (`adapters` names them), combined by weight."""

    weights: torch.Tensor
    """The members' weights, normalised (a buffer, so it follows the module to its device)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float] | torch.Tensor | None = None,
        combine: Combine = "probs",
        adapters: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if adapters is not None and len(members) != 1:
            raise ValueError("adapter members share one peft model: pass it alone with the adapter names")
        self.members = nn.ModuleList(members)
        self.adapters = list(adapters) if adapters is not None else None
        self.size = len(self.adapters) if self.adapters is not None else len(self.members)
        self.combine: Combine = combine
        self.register_buffer("weights", normalized_weights(weights, self.size), persistent=False)
        self.generation_config = getattr(members[0], "generation_config", None)
        self.config = getattr(members[0], "config", None)

    @classmethod
    def from_adapters(
        cls,
        base: nn.Module,
        folders: Sequence[str | Path],
        weights: Sequence[float] | None = None,
        combine: Combine = "probs",
    ) -> EnsembleModel:
        """One base in memory with every PEFT adapter in `folders` loaded next to each other (names m0, m1, ...)."""
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, folders[0], adapter_name="m0")
        for i, folder in enumerate(folders[1:], start=1):
            model.load_adapter(folder, adapter_name=f"m{i}")
        return cls([model.eval()], weights, combine, adapters=[f"m{i}" for i in range(len(folders))])

    def run_member(self, k: int, **inputs: Any) -> Any:
        """Member k's own forward (for adapters: the shared model with adapter k active)."""
        if self.adapters is None:
            return self.members[k](**inputs)
        model = cast("PeftModel", self.members[0])  # adapter members: one peft model (see __init__)
        model.set_adapter(self.adapters[k])
        return model(**inputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Combined logits of every member for the whole sequence, as `.logits` (like a transformers output)."""
        outs = [
            self.run_member(k, input_ids=input_ids, attention_mask=attention_mask, **kwargs) for k in range(self.size)
        ]
        return SimpleNamespace(logits=combine_logits([o.logits for o in outs], self.weights, self.combine))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 128,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        do_sample: bool = False,
        num_beams: int = 1,
        **_sampling: Any,
    ) -> torch.Tensor:
        """Greedy decoding on the combined distribution; returns prompt + new tokens like `generate`.

        Prompts may be left-padded: positions are counted from each row's first real token, as transformers does.
        Rows that finished (an eos) are filled with `pad_token_id`. Sampling settings (temperature=None, ...) are
        accepted and ignored; sampling and beam search are not implemented.
        """
        if do_sample or num_beams != 1:
            raise NotImplementedError("EnsembleModel.generate decodes greedily only")
        stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        pad = pad_token_id if pad_token_id is not None else (min(stops) if stops else 0)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        caches: list[Any] = [None] * self.size
        step_ids, out = input_ids, input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = []
            for k in range(self.size):
                o = self.run_member(
                    k, input_ids=step_ids, attention_mask=mask, position_ids=positions,
                    cache=caches[k], use_cache=True,
                )  # fmt: skip
                caches[k] = o.cache
                logits.append(o.logits[:, -1])
            next_ids = combine_logits(logits, self.weights, self.combine).argmax(-1)
            next_ids = torch.where(done, torch.full_like(next_ids, pad), next_ids)
            out = torch.cat([out, next_ids[:, None]], dim=1)
            done |= torch.tensor([int(t) in stops for t in next_ids], device=done.device)
            if bool(done.all()):
                break
            step_ids = next_ids[:, None]
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
            positions = positions[:, -1:] + 1
        return out
