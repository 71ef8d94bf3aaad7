"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from tunelab.config import TrainingSection


def build_optimizer(model: nn.Module, cfg: TrainingSection) -> torch.optim.Optimizer:
    """AdamW over trainable parameters. Matrices get weight decay; vectors (norms, biases) do not, because
    shrinking a norm's gain or a bias toward zero is not regularisation, it changes what the layer computes."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach batches the per-tensor updates into a few kernels; fused exists for CUDA and CPU in recent torch.
    fused = all(p.device.type in ("cuda", "cpu") for p in decay + no_decay)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.learning_rate, betas=cfg.adam_betas, fused=fused or None
    )


def warmup_steps(cfg: TrainingSection, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingSection, total_steps: int) -> LambdaLR:
    """Linear warmup from 0, then cosine or linear decay to 0 at `total_steps`, or constant."""
    warm = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.scheduler == "linear":
            return 1.0 - progress
        return 1.0

    return LambdaLR(optimizer, factor)
