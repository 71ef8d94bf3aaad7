"""Layer-wise training: train chosen transformer layers (top-k, bottom-k, by index) and/or parameters by name,
optionally thawing one more layer every N steps or epochs (gradual unfreezing, ULMFiT).

Layer-wise learning rates are an optimizer setting: see `training.layer_lr_decay`, `head_lr`, `embedding_lr`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section
from tunelab.methods.base import Method, StepHook, freeze_all_, trainable_to_fp32_, unfreeze_matching_
from tunelab.methods.schedule import UnfreezeSchedule
from tunelab.methods.weights import load_model_weights_, save_model_folder
from tunelab.models.parts import decoder_layers


class FreezeConfig(Section):
    name: Literal["freeze"] = "freeze"
    """Train only chosen layers; everything else stays frozen."""
    top_k_layers: int = Field(default=2, ge=0)
    """Train the last k transformer layers (default 2, or 0 when `bottom_k_layers` or `layers` is given)."""
    bottom_k_layers: int = Field(default=0, ge=0)
    """Train the first k transformer layers."""
    layers: list[int] = []
    """Train these layers by index (0 is the first; -1 the last)."""
    modules: list[str] = []
    """Also train parameters whose dotted name matches one of these regexes (e.g. 'norm', 'lm_head', 'self_attn')."""
    unfreeze_every: int | None = Field(default=None, ge=1)
    """Gradual unfreezing: start with the layers chosen above, then thaw one more of the other layers, from the
    top down, every this many `unfreeze_unit`s until all layers train (ULMFiT). Off when null."""
    unfreeze_unit: Literal["steps", "epochs"] = "epochs"
    """Unit of `unfreeze_every`."""

    @model_validator(mode="before")
    @classmethod
    def _top_k_default(cls, raw: Any) -> Any:
        # Asking for bottom layers or explicit indices should not also train the top two by default.
        if isinstance(raw, dict) and "top_k_layers" not in raw and (raw.get("bottom_k_layers") or raw.get("layers")):
            raw = {**raw, "top_k_layers": 0}
        return raw


def chosen_layers(n_layers: int, cfg: FreezeConfig) -> list[int]:
    """Indices of the layers the config trains from the start, in ascending order."""
    wanted = set(range(n_layers - cfg.top_k_layers, n_layers)) | set(range(cfg.bottom_k_layers))
    for i in cfg.layers:
        if not -n_layers <= i < n_layers:
            raise ConfigError(
                f"method.layers: index {i} is out of range for a model with {n_layers} layers "
                f"(use 0..{n_layers - 1}, or -1..-{n_layers} counting from the top)."
            )
        wanted.add(i % n_layers)
    for key in ("top_k_layers", "bottom_k_layers"):
        if getattr(cfg, key) > n_layers:
            raise ConfigError(f"method.{key}={getattr(cfg, key)} but the model has {n_layers} layers. Lower it.")
    return sorted(wanted)


def apply_(model: nn.Module, cfg: FreezeConfig) -> nn.Module:
    freeze_all_(model)
    _, layers = decoder_layers(model)
    start = chosen_layers(len(layers), cfg)
    for i in start:
        layers[i].requires_grad_(True)
    if cfg.modules and unfreeze_matching_(model, cfg.modules) == 0:
        raise ConfigError(
            f"method.modules {cfg.modules} match no parameter name. Names look like "
            f"'{next(n for n, _ in model.named_parameters())}'; fix the regexes."
        )
    if cfg.unfreeze_every is None:
        trainable_to_fp32_(model)
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            "method.unfreeze_every needs something to train from the start: set top_k_layers (e.g. 1), "
            "bottom_k_layers, layers or modules."
        )
    trainable_to_fp32_(model)
    for group in later_groups(model, cfg):  # cast now: the optimizer is built once, over every tensor that will train
        for p in group:
            p.data = p.data.float()
    return model


def later_groups(model: nn.Module, cfg: FreezeConfig) -> list[list[nn.Parameter]]:
    """The layers gradual unfreezing thaws, one group each, from the top down (those not chosen from the start)."""
    _, layers = decoder_layers(model)
    start = set(chosen_layers(len(layers), cfg))
    return [list(layers[i].parameters()) for i in reversed(range(len(layers))) if i not in start]


def unfreeze_schedule(model: nn.Module, cfg: FreezeConfig) -> list[StepHook]:
    """With `unfreeze_every`: the schedule that thaws the later layers (`model` as `apply_` left it)."""
    if cfg.unfreeze_every is None:
        return []
    first = [p for p in model.parameters() if p.requires_grad]
    return [UnfreezeSchedule([first, *later_groups(model, cfg)], cfg.unfreeze_every, cfg.unfreeze_unit)]


METHOD = Method(
    name="freeze",
    config=FreezeConfig,
    apply_=apply_,
    save=save_model_folder,
    load_=load_model_weights_,
    freezes_base=True,
    step_hooks=unfreeze_schedule,
)
