"""LoRA (and rsLoRA) through peft. Saved in the PEFT adapter format, which peft and servers load directly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from pydantic import Field
from torch import nn

from tunelab.methods.base import Method, trainable_to_fp32_
from tunelab.schema import Section


class LoraConfig(Section):
    name: Literal["lora"] = "lora"
    """Low-rank adapters on chosen linear layers; the base stays frozen."""
    r: int = Field(16, ge=1)
    """Adapter rank."""
    alpha: float = Field(32, gt=0)
    """Scale numerator: the update is (alpha / r) * B @ A, or alpha / sqrt(r) with rslora."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input. Off by default: on a CPU the masks cost ~7% of a step, and short
    fine-tunes rarely overfit through the adapter."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear` (every linear layer but the output head)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r), which keeps high ranks learning."""
    modules_to_save: list[str] = []
    """Modules trained in full next to the adapters and saved with them (e.g. a classification head)."""


def peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.rslora,
        modules_to_save=cfg.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def apply_(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    # peft wraps the model and freezes the base in place; the wrapper is what trains and saves.
    peft_model = get_peft_model(model, peft_config(cfg))
    trainable_to_fp32_(peft_model)
    return peft_model


def save(model: nn.Module, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)


def load_(model: nn.Module, folder: Path) -> nn.Module:
    return PeftModel.from_pretrained(model, folder)


METHOD = Method(name="lora", config=LoraConfig, apply_=apply_, save=save, load_=load_, freezes_base=True)
