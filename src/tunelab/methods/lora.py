"""LoRA (and rsLoRA, DoRA, PiSSA/OLoRA initialisation, per-module ranks) through peft.

Saved in the PEFT adapter format, which peft and servers load directly. LoRA+ is not a different adapter but a
larger learning rate for B: see `training.loraplus_lr_ratio` (train/optim.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from peft import LoraConfig as PeftLoraConfig
from peft import set_peft_model_state_dict
from pydantic import Field, model_validator
from safetensors.torch import load_file
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
    target_experts: bool = False
    """Mixture-of-experts models: also put LoRA on every expert's weights (the 3-D expert tensors such as
    `experts.gate_up_proj`, `experts.down_proj`; peft's `target_parameters`), besides `target_modules` (attention
    and other linear layers). The routers stay frozen (method `full` trains them); the load-balancing loss still
    shapes what reaches them through the adapters."""
    modules_to_save: list[str] = []
    """Modules trained in full next to the adapters and saved with them (e.g. a classification head)."""
    start_from: str | None = None
    """A saved LoRA adapter folder of the same shape (r, targets) whose weights training starts from instead of
    B = 0: continued training of a served adapter (`tunelab retrain`), so the result still applies to the base."""

    @model_validator(mode="after")
    def _compatible(self) -> LoraConfig:
        if self.dora and self.init in ("pissa", "olora"):
            raise ValueError(
                f"dora cannot be combined with init={self.init}: the {self.init} start changes the base weights, and "
                "a DoRA adapter normalises base+update, so it cannot be converted back to apply to the original "
                "base. Use init=default with dora, or dora=false with this init"
            )
        if self.start_from is not None and self.init != "default":
            raise ValueError(f"start_from continues a saved adapter; init={self.init} would replace its weights")
        if self.target_experts and (self.dora or self.init in ("pissa", "olora")):
            raise ValueError(
                "target_experts puts plain LoRA on the expert tensors (peft's target_parameters), which takes "
                f"neither dora nor init={self.init}. Use dora=false and init=default with target_experts"
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


def expert_parameters(model: nn.Module) -> list[str]:
    """The expert tensors of a mixture-of-experts model as peft's `target_parameters` names
    (`experts.gate_up_proj`, ...): the 3-D parameters of every `*Experts` module."""
    found = set()
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Experts"):
            leaf = name.rsplit(".", 1)[-1]
            found |= {f"{leaf}.{p}" for p, w in module.named_parameters(recurse=False) if w.dim() == 3}
    return sorted(found)


def apply_(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    check_targets(model, cfg)
    config = peft_config(cfg, task_type(model))
    if cfg.target_experts:
        experts = expert_parameters(model)
        if not experts:
            raise ConfigError(
                f"method.target_experts: {type(model).__name__} has no experts (it is not a mixture-of-experts "
                "model). Remove target_experts, or use an MoE model (Mixtral, Qwen-MoE, OLMoE)."
            )
        config.target_parameters = experts
    peft_model = wrap_(model, config)
    if cfg.init in ("pissa", "olora"):
        lora_init.remember_initial_(peft_model)
    if cfg.start_from is not None:
        load_start_(peft_model, Path(cfg.start_from))
    return peft_model


def load_start_(peft_model: nn.Module, folder: Path) -> None:
    """Copy a saved adapter's weights into the freshly wrapped model; every LoRA weight must be found in it with
    its shape (a different r or other targets is a ConfigError, not a silent partial start)."""
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"method.start_from: '{folder}' holds no adapter_model.safetensors (a saved LoRA adapter).")
    fix = "Use the r and target_modules it was trained with."
    try:
        result = set_peft_model_state_dict(peft_model, load_file(str(weights)))
    except RuntimeError as exc:  # torch's size mismatch: another r, or other layers
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise ConfigError(f"method.start_from: the adapter in '{folder}' does not fit ({first}). {fix}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"method.start_from: the adapter in '{folder}' does not fit this method section "
            f"({len(missing)} LoRA weights missing, {len(result.unexpected_keys)} unexpected, e.g. "
            f"{(missing or result.unexpected_keys)[0]}). {fix}"
        )


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
