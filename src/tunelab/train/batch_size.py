"""Automatic batch size: the largest micro-batch that fits, then gradient accumulation up to the global batch.

The global batch (examples per optimizer step, over all processes) is what the learning rate is tuned for, so it
is kept exactly: micro-batch x accumulation x processes = global batch, the micro-batch being a divisor of the
per-process batch. Which micro-batch fits is found by trying (CUDA: one forward and backward on the longest
examples, out-of-memory caught) or, on the CPU, where running out of memory kills the process instead of raising,
by an estimate of the activation memory against the RAM that is available.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, cast

import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedModel

from tunelab.core.errors import ConfigError, RunError
from tunelab.objectives.base import Objective
from tunelab.train.config import TrainingSection
from tunelab.train.module import TrainingModule
from tunelab.train.step import ProbeSteps, train_step

RAM_SHARE = 0.5
"""Share of the available RAM that the CPU estimate may plan to fill (the estimate is rough; leave room)."""


def divisors(n: int) -> list[int]:
    """The divisors of `n`, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def largest_fitting(candidates: list[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of the ascending `candidates` for which `fits` holds, by binary search (a batch that fits means
    every smaller one fits); None when not even the smallest fits."""
    lo, hi, best = 0, len(candidates) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            best, lo = candidates[mid], mid + 1
        else:
            hi = mid - 1
    return best


def split_global_batch(global_batch: int, world: int, fits: Callable[[int], bool]) -> tuple[int, int]:
    """(micro-batch, accumulation steps) with micro x accum x world == global_batch and the largest micro-batch
    that fits."""
    if global_batch % world:
        raise ConfigError(
            f"training.global_batch_size={global_batch} does not split evenly over {world} processes. Set it to a "
            f"multiple of {world} (e.g. {world * max(1, round(global_batch / world))})."
        )
    per_process = global_batch // world
    micro = largest_fitting(divisors(per_process), fits)
    if micro is None:
        raise RunError(
            "training.auto_batch_size: not even one example of the longest length fits in memory. Turn on "
            "training.gradient_checkpointing, lower data.max_length, or train fewer weights (method: lora)."
        )
    return micro, per_process // micro


def resolve_batch_size(
    cfg: TrainingSection,
    model: nn.Module,
    objective: Objective,
    items: list[Any],
    *,
    pad_id: int,
    accelerator: Accelerator,
    bf16: bool,
    ctx: Any = None,
) -> TrainingSection:
    """`cfg` with `batch_size` and `grad_accum` chosen for `training.global_batch_size` (the configured
    batch_size x grad_accum x processes when unset), and auto_batch_size off: the result is what a resume reuses.
    Every process takes the smallest micro-batch any of them found."""
    world = accelerator.num_processes
    global_batch = cfg.global_batch_size or cfg.batch_size * cfg.grad_accum * world
    device = accelerator.device
    if device.type == "cuda":
        fits = trial_step_fits(model, objective, items, pad_id=pad_id, device=device, bf16=bf16, ctx=ctx)
    else:
        longest = max(objective.length(t) for t in items)
        estimate = memory_estimate_fits(model, longest, bf16, cfg.gradient_checkpointing)
        fits = estimate or (lambda micro: micro <= cfg.batch_size)  # no estimate: the configured size is the cap
    micro, _ = split_global_batch(global_batch, world, fits)
    found = cast(torch.Tensor, accelerator.gather(torch.tensor([micro], device=device)))  # one tensor in, one out
    micro = int(found.min())
    per_process = global_batch // world
    return cfg.model_copy(
        update={"batch_size": micro, "grad_accum": per_process // micro, "auto_batch_size": False,
                "global_batch_size": None}
    )  # fmt: skip


def trial_step_fits(
    model: nn.Module, objective: Objective, items: list[Any], *, pad_id: int, device: torch.device, bf16: bool, ctx: Any
) -> Callable[[int], bool]:
    """On CUDA: whether a forward and backward on the `micro` longest items runs without running out of memory,
    with the optimizer's two fp32 moments per trainable weight held aside (AdamW allocates them at its first step)."""
    module = TrainingModule(model, objective, ctx).train()
    longest = sorted(range(len(items)), key=lambda i: objective.length(items[i]), reverse=True)
    moments = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)

    def fits(micro: int) -> bool:
        chosen = [items[longest[k % len(longest)]] for k in range(micro)]
        held = None
        try:
            held = torch.empty(moments, dtype=torch.uint8, device=device)
            train_step(module, objective, [objective.collate(chosen, pad_id)], ProbeSteps(), device=device, bf16=bf16)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            del held
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return fits


def memory_estimate_fits(
    model: nn.Module, seq_len: int, bf16: bool, checkpointing: bool, available: int | None = None
) -> Callable[[int], bool] | None:
    """On the CPU: whether the estimated training memory of a micro-batch of `seq_len`-token examples fits in
    RAM_SHARE of the available RAM. Nothing is run. None when the model's config lacks the usual sizes (layers,
    hidden, heads, vocabulary) or the available RAM is unknown."""
    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    available = available if available is not None else available_ram()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = 3 * 4 * trainable  # fp32 gradient and the optimizer's two moments
    sizes = _sizes(hf.config) if hf is not None else None
    if sizes is None or available is None:
        return None
    return lambda micro: fixed + activation_bytes(*sizes, micro, seq_len, bf16, checkpointing) <= RAM_SHARE * available


def activation_bytes(
    layers: int, hidden: int, heads: int, vocab: int, micro: int, seq_len: int, bf16: bool, checkpointing: bool
) -> int:
    """Activations a decoder keeps for the backward. Per layer s·b·h·(34 + 5·a·s/h) bytes in 16-bit (Korthikanti
    et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"), doubled in fp32; under
    checkpointing a layer keeps only its input (2·s·b·h bytes) and one layer is recomputed at a time. The logits,
    their fp32 log-softmax and its gradient add 3 x 4·b·s·V bytes."""
    s, b, h, a = seq_len, micro, hidden, heads
    scale = 1 if bf16 else 2
    per_layer = s * b * h * (34 + 5 * a * s / h) * scale
    kept = layers * 2 * s * b * h * scale + per_layer if checkpointing else layers * per_layer
    return int(kept + 3 * 4 * b * s * vocab)


def _sizes(config: Any) -> tuple[int, int, int, int] | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    names = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
    values = [getattr(text, name, None) for name in names]
    return tuple(values) if all(isinstance(v, int) for v in values) else None  # type: ignore[return-value]


def available_ram() -> int | None:
    """Bytes of RAM available to new allocations (Linux MemAvailable; free pages elsewhere), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
