"""IA3: learnt per-feature scales on keys, values and the feed-forward input (through peft). Tiny and mergeable."""

from __future__ import annotations

from typing import Literal

from peft import IA3Config as PeftIa3Config
from peft.tuners.tuners_utils import BaseTunerLayer
from pydantic import model_validator
from torch import nn

from tunelab.core.schema import Section
from tunelab.methods.base import Method
from tunelab.methods.peft_io import load_adapter_, save_adapter, task_type, wrap_


class Ia3Config(Section):
    name: Literal["ia3"] = "ia3"
    """Scale chosen activations by learnt vectors (initialised to 1, so training starts at the base model)."""
    target_modules: list[str] | None = None
    """Modules whose activations are scaled; default: peft's choice for the architecture (Llama-style: k_proj,
    v_proj, down_proj)."""
    feedforward_modules: list[str] | None = None
    """Which targets are feed-forward layers (scaled on their input, not their output); must be among
    `target_modules`. Default: peft's choice for the architecture (Llama-style: down_proj)."""
    modules_to_save: list[str] = []
    """Modules trained in full next to the scales and saved with them (e.g. a classification head)."""

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Ia3Config:
        if self.feedforward_modules is not None and self.target_modules is None:
            raise ValueError("feedforward_modules needs target_modules too (name every scaled module there)")
        extra = set(self.feedforward_modules or []) - set(self.target_modules or [])
        if extra:
            raise ValueError(
                f"feedforward_modules {sorted(extra)} are not in target_modules {self.target_modules}; "
                "a feed-forward module must also be a target"
            )
        return self


def apply_(model: nn.Module, cfg: Ia3Config) -> nn.Module:
    ff = cfg.feedforward_modules
    if cfg.target_modules is not None and ff is None:
        ff = []  # explicit targets without feed-forward ones: all of them scale their output
    config = PeftIa3Config(
        target_modules=cfg.target_modules,
        feedforward_modules=ff,
        modules_to_save=cfg.modules_to_save or None,
        task_type=task_type(model),
    )
    model = wrap_(model, config)
    # peft's IA3 layers (0.21) lack the `cast_input_dtype_enabled` flag that peft's own
    # `disable_input_dtype_casting` (used by the loop under bf16) reads and writes; IA3 ignores it, so give it one.
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = True  # pyright: ignore[reportArgumentType] - a plain flag, not a tensor
    return model


METHOD = Method(
    name="ia3",
    config=Ia3Config,
    apply_=apply_,
    save=save_adapter,
    load_=load_adapter_,
    freezes_base=True,
    artifact="adapter",
)
