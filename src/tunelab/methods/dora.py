"""DoRA: LoRA with the update split into direction and a learnt magnitude per output feature (through peft)."""

from __future__ import annotations

from typing import Literal

from tunelab.methods import lora
from tunelab.methods.base import Method


class DoraConfig(lora.LoraConfig):
    name: Literal["dora"] = "dora"  # type: ignore[assignment]
    """Weight-decomposed low-rank adaptation: LoRA's options, with the magnitude vector always on."""
    dora: Literal[True] = True  # type: ignore[assignment]
    """Always on for this method (use method `lora` for plain LoRA)."""


METHOD = Method(
    name="dora",
    config=DoraConfig,
    apply_=lora.apply_,
    save=lora.save,
    load_=lora.METHOD.load_,
    freezes_base=True,
    artifact="adapter",
)
