"""LoRA (and rsLoRA, DoRA, PiSSA/OLoRA initialisation, per-module ranks) through peft.

Saved in the PEFT adapter format, which peft and servers load directly. LoRA+ is not a different adapter but a
larger learning rate for B: see `training.loraplus_lr_ratio` (train/optim.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from peft import LoraConfig as PeftLoraConfig
from pydantic import Field, model_validator
from torch import nn

from tunelab.core.errors import ConfigError, did_you_mean
from tunelab.core.schema import Section
from tunelab.methods import lora_init
from tunelab.methods.base import Method
from tunelab.methods.peft_io import load_adapter_, save_adapter, task_type, wrap_


class LoraConfig(Section):
    name: Literal["lora"] = "lora"
    """Low-rank adapters on chosen linear layers; the base stays frozen."""
    r: int = Field(default=16, ge=1)
    """Adapter rank."""
    alpha: float = Field(default=32, gt=0)
    """Scale numerator: the update is (alpha / r) * B @ A, or alpha / sqrt(r) with rslora."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapter's input. Off by default: on a CPU the masks cost ~7% of a step, and short
    fine-tunes rarely overfit through the adapter."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear` (every linear layer but the output head)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r), which keeps high ranks learning."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA): also learn a magnitude per output feature; slower, often better at low rank."""
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"
    """Adapter initialisation. `default`: B = 0 (training starts at the base model). `pissa` / `olora`: start from
    the principal singular vectors / a QR of each weight, removed from the base so the start is still the base
    model; the saved adapter is converted to plain LoRA (rank 2r) so it applies to the original base."""
    rank_pattern: dict[str, int] = {}
    """Per-module ranks: regex matched against the end of each module's dotted name -> rank, e.g.
    {'down_proj': 4, 'layers\\.0\\..*': 32} (peft's rule)."""
    alpha_pattern: dict[str, float] = {}
    """Per-module alphas, matched like `rank_pattern`."""
    modules_to_save: list[str] = []
    """Modules trained in full next to the adapters and saved with them (e.g. a classification head)."""

    @model_validator(mode="after")
    def _compatible(self) -> LoraConfig:
        if self.dora and self.init in ("pissa", "olora"):
            raise ValueError(
                f"dora cannot be combined with init={self.init}: the {self.init} start changes the base weights, and "
                "a DoRA adapter normalises base+update, so it cannot be converted back to apply to the original "
                "base. Use init=default with dora, or dora=false with this init"
            )
        return self


def peft_config(cfg: LoraConfig, task: str = "CAUSAL_LM") -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # pyright: ignore[reportArgumentType] - peft says int; a float alpha works
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.rslora,
        use_dora=cfg.dora,
        init_lora_weights=True if cfg.init == "default" else cfg.init,
        rank_pattern=dict(cfg.rank_pattern),
        alpha_pattern=dict(cfg.alpha_pattern),
        modules_to_save=cfg.modules_to_save or None,
        task_type=task,
    )


def check_targets(model: nn.Module, cfg: LoraConfig) -> None:
    """Every listed target and pattern must name a module; peft would otherwise silently skip a misspelt one."""
    names = [n for n, _ in model.named_modules()]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    targets = [] if cfg.target_modules == "all-linear" else cfg.target_modules
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ConfigError(
                f"method.target_modules: '{target}' names no module of {type(model).__name__}."
                f"{did_you_mean(target, leaves)} Linear layers in this model: {', '.join(leaves)}."
            )
    patterns = [("rank_pattern", p) for p in cfg.rank_pattern] + [("alpha_pattern", p) for p in cfg.alpha_pattern]
    for key, pattern in patterns:
        if not any(re.match(rf"(.*\.)?({pattern})$", n) for n in names):
            raise ConfigError(
                f"method.{key}: '{pattern}' matches no module name (it is matched against the end of dotted names "
                f"such as 'model.layers.0.self_attn.q_proj'). Fix the pattern; linear layers here: {', '.join(leaves)}."
            )


def apply_(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    check_targets(model, cfg)
    peft_model = wrap_(model, peft_config(cfg, task_type(model)))
    if cfg.init in ("pissa", "olora"):
        lora_init.remember_initial_(peft_model)
    return peft_model


def save(model: nn.Module, out: Path) -> None:
    if lora_init.has_initial(model):
        lora_init.save_converted(model, out)
    else:
        save_adapter(model, out)


METHOD = Method(
    name="lora",
    config=LoraConfig,
    apply_=apply_,
    save=save,
    load_=load_adapter_,
    freezes_base=True,
    artifact="adapter",
)
