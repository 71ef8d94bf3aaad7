"""Optimizers, parameter groups (differential learning rates, LoRA+) and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from tunelab.core.errors import ConfigError
from tunelab.methods.base import layer_index_by_parameter
from tunelab.models.parts import output_head
from tunelab.train.config import TrainingSection


@dataclass(frozen=True)
class Trainable:
    """What else decides the optimizer's groups besides the model and the `training` section: the objective's
    output layer (`head_lr`), own rates of submodules (a retriever), weights that thaw later (gradual unfreezing)
    and parameters trained beside the model (task uncertainties; no weight decay, the base rate)."""

    head: nn.Module | None = None
    learning_rates: Mapping[str, float] = field(default_factory=dict)
    dormant: Sequence[nn.Parameter] = ()
    beside: Sequence[nn.Parameter] = ()


def build_optimizer(model: nn.Module, cfg: TrainingSection, extra: Trainable | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters, grouped by learning rate and weight decay."""
    extra = extra or Trainable()
    groups = param_groups(model, cfg, extra)
    if extra.beside:
        groups.append({"params": list(extra.beside), "lr": cfg.learning_rate, "weight_decay": 0.0})
    return OPTIMIZERS[cfg.optimizer](groups, cfg)


def optimizer_parameters(model: nn.Module, dormant: Sequence[nn.Parameter] = ()) -> list[tuple[str, nn.Parameter]]:
    """Named parameters the optimizer must hold: trainable now, or among `dormant` (tied weights once)."""
    later = {id(p) for p in dormant}
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if id(p) not in seen and (p.requires_grad or id(p) in later):
            seen.add(id(p))
            out.append((name, p))
    return out


def param_groups(model: nn.Module, cfg: TrainingSection, extra: Trainable | None = None) -> list[dict]:
    """One group per distinct (learning rate, weight decay); the group at the base rate comes first, since that is
    the rate the loop logs.

    Matrices get weight decay; vectors (norms, biases) do not, because shrinking a norm's gain or a bias toward
    zero is not regularisation, it changes what the layer computes.
    """
    extra = extra or Trainable()
    named = optimizer_parameters(model, extra.dormant)
    if not named:
        raise ConfigError(
            "Nothing to train: the method leaves every parameter frozen. Check the method section (e.g. "
            "freeze.top_k_layers=0 with no `modules`, or target_modules that match nothing)."
        )
    rate = _rate_rule(model, cfg, named, extra)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in named:
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((rate(name, p), decay), []).append(p)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0] != cfg.learning_rate, -item[0][0], -item[0][1]))
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in ordered]


def _rate_rule(
    model: nn.Module, cfg: TrainingSection, named: list[tuple[str, nn.Parameter]], extra: Trainable
) -> Callable[[str, nn.Parameter], float]:
    """The learning rate of each parameter under the layer-wise decay, head/embedding rates and LoRA+."""
    input_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = _ids(input_embeddings()) if input_embeddings is not None else set()
    heads = _ids(extra.head if extra.head is not None else output_head(model))
    if cfg.head_lr and cfg.embedding_lr and cfg.head_lr != cfg.embedding_lr and embeddings & heads:
        raise ConfigError(
            f"training.head_lr ({cfg.head_lr}) and training.embedding_lr ({cfg.embedding_lr}) differ, but this model "
            "ties its output head to its input embeddings, so they are one tensor. Set only one of them."
        )
    if cfg.loraplus_lr_ratio and not any(".lora_B." in name for name, _ in named):
        raise ConfigError(
            "training.loraplus_lr_ratio is set, but the model has no trainable LoRA B matrices. Use it with "
            "method lora or dora (or a hybrid with lora), or remove it."
        )
    n_layers, layer_of = layer_index_by_parameter(model) if cfg.layer_lr_decay else (0, {})
    own_rates = extra.learning_rates  # a module trained beside the model (a retriever): {submodule: rate}

    def rate(name: str, p: nn.Parameter) -> float:
        for prefix, own in own_rates.items():
            if name.startswith(prefix + "."):
                return own
        lr = cfg.learning_rate
        if cfg.layer_lr_decay:
            if id(p) in layer_of:
                lr *= cfg.layer_lr_decay ** (n_layers - 1 - layer_of[id(p)])
            elif id(p) in embeddings and id(p) not in heads:
                lr *= cfg.layer_lr_decay**n_layers
        if cfg.embedding_lr and id(p) in embeddings:
            lr = cfg.embedding_lr
        if cfg.head_lr and id(p) in heads:
            lr = cfg.head_lr
        if cfg.loraplus_lr_ratio and (".lora_B." in name or ".lora_embedding_B." in name):
            lr *= cfg.loraplus_lr_ratio
        return lr

    return rate


def _ids(module: nn.Module | None) -> set[int]:
    return {id(p) for p in module.parameters()} if module is not None else set()


def _all_params(groups: list[dict]) -> list[nn.Parameter]:
    return [p for g in groups for p in g["params"]]


def _adamw(groups: list[dict], cfg: TrainingSection) -> torch.optim.Optimizer:
    # fused runs the whole update in one kernel per dtype/device (CUDA, and CPU in recent torch); otherwise torch
    # picks foreach, which batches the per-tensor updates.
    fused = all(p.device.type in ("cuda", "cpu") and p.dtype == torch.float32 for p in _all_params(groups))
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, fused=fused or None)


def _adamw_8bit(groups: list[dict], cfg: TrainingSection) -> torch.optim.Optimizer:
    if not all(p.device.type == "cuda" for p in _all_params(groups)):
        raise ConfigError(
            "training.optimizer=adamw_8bit needs a CUDA GPU: bitsandbytes' 8-bit optimizer kernels run only there. "
            "On this device use adamw, or adafactor for the least optimizer memory."
        )
    try:
        import bitsandbytes as bnb  # pyright: ignore[reportMissingImports] (optional, CUDA only)
    except ImportError:
        raise ConfigError(
            "training.optimizer=adamw_8bit needs the bitsandbytes package. Install it with `pip install bitsandbytes` "
            "or choose another optimizer."
        ) from None
    return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=cfg.adam_betas)


def _sgd(groups: list[dict], cfg: TrainingSection) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _adafactor(groups: list[dict], cfg: TrainingSection) -> torch.optim.Optimizer:
    # torch's Adafactor takes `lr` as the cap on the relative step size (Shazeer & Stern, 2018), so the usual
    # schedule still shapes it.
    return torch.optim.Adafactor(groups, lr=cfg.learning_rate)


def _lion(groups: list[dict], cfg: TrainingSection) -> torch.optim.Optimizer:
    return Lion(groups, lr=cfg.learning_rate, betas=cfg.lion_betas)


OPTIMIZERS: dict[str, Callable[[list[dict], TrainingSection], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adamw_8bit": _adamw_8bit,
    "sgd": _sgd,
    "adafactor": _adafactor,
    "lion": _lion,
}


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), with decoupled weight decay:

        p <- p * (1 - lr * wd) - lr * sign(beta1 * m + (1 - beta1) * g);   m <- beta2 * m + (1 - beta2) * g

    torch has no Lion and the update is three lines, so it lives here rather than as one more dependency.
    """

    def __init__(
        self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.lerp(p.grad, m, beta1).sign_(), alpha=-group["lr"])
                m.lerp_(p.grad, 1 - beta2)
        return loss


def warmup_steps(cfg: TrainingSection, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warm: int, cfg: TrainingSection) -> float:
    """The multiplier of the peak learning rate used for optimizer step `step + 1` (steps count from 0).

    Warmup rises linearly from 1/(warm+1) to 1; after it, `progress` runs from 0 to 1 over the remaining steps.
    """
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    floor, kind = cfg.min_lr_ratio, cfg.scheduler
    if kind == "constant":
        return 1.0
    if kind == "inverse_sqrt":
        return max(floor, math.sqrt((warm + 1) / (step + 1)))
    if kind == "wsd":
        decay_start = max(warm, total_steps - math.ceil(cfg.decay_ratio * total_steps))
        if step < decay_start:
            return 1.0
        shape = 1.0 - min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    elif kind == "linear":
        shape = 1.0 - progress
    elif kind == "polynomial":
        shape = (1.0 - progress) ** cfg.poly_power
    elif kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "cosine_restarts":
        shape = 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((progress * cfg.num_cycles) % 1.0)))
    else:
        raise ValueError(f"unknown scheduler {kind!r}")
    return floor + (1.0 - floor) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingSection, total_steps: int) -> LambdaLR:
    """Warmup, then the configured shape; every parameter group keeps its own peak rate."""
    warm = warmup_steps(cfg, total_steps)
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warm, cfg))
