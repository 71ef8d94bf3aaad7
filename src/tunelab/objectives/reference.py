"""The reference policy of DPO, KTO, GRPO and PPO: log π_ref(y|x) for the answers of a batch.

Three sources, cheapest first:
- `adapter_disabled`: the trained model itself with its adapter switched off. No second copy in memory; valid
  when the adapter starts as a no-op (LoRA, DoRA, IA3), not when its initialisation moved the base weights
  (PiSSA/OLoRA) or when the method trains the base weights.
- `copy`: a frozen copy of the model as training starts (any method).
- another model (`reference_model`: a model source or a finished run, e.g. the SFT run before DPO).
With `precompute`, the reference log-probs of every pair are computed once before training and ride along in the
batches, and the copy is freed: training then costs one forward per step instead of two.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch
from peft import PeftModel
from torch import nn

from tunelab.core.device import autocast
from tunelab.core.errors import ConfigError
from tunelab.core.types import Batch
from tunelab.data.pipeline import PreparedData
from tunelab.methods.trained import load_trained
from tunelab.models.load import pad_id
from tunelab.objectives.base import SetupArgs
from tunelab.objectives.lm import sequence_logps, token_logps

ReferenceKind = Literal["auto", "adapter_disabled", "copy"]


@dataclass
class Reference:
    """Computes reference log-probs; `model` None means the trained model with its adapter disabled."""

    model: nn.Module | None

    def logps(self, policy: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-row summed reference log-probs of the labelled tokens (from the batch when precomputed)."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        with torch.no_grad(), self.active(policy) as model:
            return sequence_logps(model, batch)[0]

    def token_logps(self, policy: nn.Module, batch: Batch) -> torch.Tensor:
        """Reference log-probs of every labelled token (flat, in `token_logps` order)."""
        with torch.no_grad(), self.active(policy) as model:
            return token_logps(model, batch)[0]

    @contextlib.contextmanager
    def active(self, policy: nn.Module):
        """The reference model to run, as a context (the adapter is disabled only inside it)."""
        if self.model is not None:
            yield self.model
            return
        with cast(PeftModel, policy).disable_adapter():  # model None: the policy is a peft model (build_reference)
            yield policy


def _adapter_is_noop_at_start(model: nn.Module, method: str) -> bool:
    if not hasattr(model, "disable_adapter") or method in ("full", "freeze", "hybrid"):
        return False
    inits = [str(getattr(c, "init_lora_weights", "")).lower() for c in getattr(model, "peft_config", {}).values()]
    return not any(i.startswith(("pissa", "olora", "corda", "eva")) for i in inits)


def build_reference(model: nn.Module, method: str, kind: ReferenceKind, source: str | None, device) -> Reference:
    """The reference for a run: another model (`source`), the adapter-disabled model, or a frozen copy."""
    if source is not None:
        ref, _ = load_trained(source)
        return Reference(_frozen(ref.to(device)))
    noop = _adapter_is_noop_at_start(model, method)
    if kind == "adapter_disabled" and not noop:
        raise ConfigError(
            f"objective.reference=adapter_disabled needs an adapter that starts as a no-op (lora, dora, ia3), but "
            f"method '{method}' trains or moves the base weights, so disabling it does not give the starting "
            "model. Use objective.reference=copy (or auto)."
        )
    if kind == "adapter_disabled" or (kind == "auto" and noop):
        return Reference(None)
    return Reference(_frozen(copy.deepcopy(model)))


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def with_reference_logps(
    reference: Reference,
    policy: nn.Module,
    items: list[Any],
    collate: Callable[[list[Any], int], Batch],
    pad_id: int,
    device: torch.device,
    bf16: bool,
    batch_size: int = 8,
) -> list[Any]:
    """Copies of `items` whose `ref` holds the reference log-probs of their two rows.

    `collate` must lay a batch of B items out as B first rows then B second rows (chosen then rejected for
    pairs; answer then mismatched answer for KTO), each item contributing one row to each half.
    """
    out: list[Any] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items() if k != "ref_logps"}
        with autocast(device, bf16):
            first, second = reference.logps(policy, batch).float().cpu().chunk(2)
        out += [replace(item, ref=(a, b)) for item, a, b in zip(chunk, first.tolist(), second.tolist(), strict=True)]
    return out


def setup_reference(
    cfg: Any, args: SetupArgs, collate: Callable[[list[Any], int], Batch]
) -> tuple[Reference, PreparedData | None]:
    """The reference a DPO/KTO config asks for. With `precompute_reference` its log-probs ride along on copies of
    the items (the data returned) and no reference is kept; otherwise the data is unchanged (None)."""
    reference = build_reference(args.model, args.method, cfg.reference, cfg.reference_model, args.device)
    if not cfg.precompute_reference:
        return reference, None
    pad = pad_id(args.tokenizer)
    train, val = (
        with_reference_logps(reference, args.model, items, collate, pad, args.device, args.bf16)
        for items in (args.data.train, args.data.val)
    )
    return Reference(None), replace(args.data, train=train, val=val)  # never asked: every batch has `ref_logps`
