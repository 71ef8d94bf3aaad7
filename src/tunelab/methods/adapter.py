"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): down-project, non-linearity, up-project and a
residual, inserted after the attention and/or MLP sublayer of each transformer layer; the base stays frozen.

peft has no bottleneck adapters, so they are written here: the chosen sublayers are wrapped (not patched) by
`Adapted`, which applies an adapter to the sublayer's output before the layer's own residual add. They stay as
modules (nothing to merge) and are saved as `bottleneck_adapters.safetensors` + `bottleneck_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section
from tunelab.methods.base import Method, freeze_all_
from tunelab.models.parts import decoder_layers

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_adapters.safetensors"

# Where each sublayer's output is produced, per architecture family, tried in order. The output of these modules
# is what enters the layer's residual add (BERT's `*.output.dense` is followed by dropout, residual and LayerNorm).
SUBLAYERS: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn", "attn", "self_attention", "attention.output.dense"),
    "mlp": ("mlp", "feed_forward", "ffn", "output.dense"),
}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class AdapterConfig(Section):
    name: Literal["adapter"] = "adapter"
    """Bottleneck adapters after chosen sublayers of every (or chosen) transformer layer; the base stays frozen."""
    bottleneck: int = Field(default=16, ge=1)
    """Adapter width: the down-projection's output size. Each adapter costs 2 x hidden x width + width + hidden."""
    after: list[Literal["attention", "mlp"]] = ["attention", "mlp"]
    """Sublayers followed by an adapter. Houlsby: [attention, mlp]; Pfeiffer: [mlp]."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """Non-linearity between the two projections."""
    layers: list[int] | None = None
    """Transformer layer indices that get adapters (negative counts from the top); default: every layer."""
    scale: float = Field(default=1.0, gt=0)
    """Multiplier on the adapter's output before its residual."""

    @field_validator("after")
    @classmethod
    def _after_not_empty(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("list attention and/or mlp once each, e.g. [attention, mlp] (Houlsby) or [mlp] (Pfeiffer)")
        return value


class Bottleneck(nn.Module):
    """x + scale * up(act(down(x))). `up` starts at zero, so the adapted model starts as the base model."""

    def __init__(self, dim: int, width: int, activation: str, scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(width, dim)
        self.scale = scale
        self.spec = {"dim": dim, "width": width, "activation": activation, "scale": scale}
        """What `load_` needs to rebuild this adapter before loading its weights."""
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The adapter keeps fp32 weights over a possibly bf16 base; its output joins the stream in the base's dtype.
        h = self.up(self.act(self.down(x.to(self.down.weight.dtype))))
        return x + (self.scale * h).to(x.dtype)


class Adapted(nn.Module):
    """A sublayer followed by an adapter on its output (the first element when the sublayer returns a tuple)."""

    def __init__(self, inner: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args: object, **kwargs: object) -> object:
        # Whatever the wrapped sublayer takes and returns (a tensor, or a tuple led by the hidden states).
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


def hidden_size(model: nn.Module) -> int:
    config = model.config
    for key in ("hidden_size", "d_model", "n_embd"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise ConfigError(f"{type(model).__name__}: cannot tell its hidden size, so bottleneck adapters cannot be sized.")


def _sublayer_path(layer: nn.Module, where: str) -> str:
    for path in SUBLAYERS[where]:
        try:
            layer.get_submodule(path)
        except AttributeError:
            continue
        return path
    raise ConfigError(
        f"method.after: no {where} sublayer found in {type(layer).__name__} "
        f"(looked for {', '.join(SUBLAYERS[where])}). Bottleneck adapters support Llama-, GPT-2- and BERT-style "
        "layers; use lora for this model."
    )


def wrap_(model: nn.Module, path: str, adapter: Bottleneck) -> None:
    """Replace the module at dotted `path` by `Adapted(module, adapter)`."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    inner = getattr(parent, child)
    setattr(parent, child, Adapted(inner, adapter.to(next(inner.parameters()).device)))


def inject_(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Wrap the chosen sublayers with fresh adapters; returns the wrapped modules' dotted names."""
    prefix, layers = decoder_layers(model)
    if cfg.layers is not None and any(not -len(layers) <= i < len(layers) for i in cfg.layers):
        raise ConfigError(f"method.layers {cfg.layers}: the model has {len(layers)} layers (0..{len(layers) - 1}).")
    chosen = range(len(layers)) if cfg.layers is None else sorted({i % len(layers) for i in cfg.layers})
    dim = hidden_size(model)
    wrapped = []
    for i in chosen:
        for where in cfg.after:
            path = f"{prefix}.{i}.{_sublayer_path(layers[i], where)}"
            wrap_(model, path, Bottleneck(dim, cfg.bottleneck, cfg.activation, cfg.scale))
            wrapped.append(path)
    return wrapped


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor, under its dotted name in `model`."""
    return {
        f"{name}.adapter.{key}": tensor.detach().contiguous()
        for name, module in model.named_modules()
        if isinstance(module, Adapted)
        for key, tensor in module.adapter.state_dict().items()
    }


def apply_(model: nn.Module, cfg: AdapterConfig) -> nn.Module:
    freeze_all_(model)
    inject_(model, cfg)
    return model


def save(model: nn.Module, out: Path) -> None:
    """bottleneck_config.json (where each adapter sits and its shape) + bottleneck_adapters.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    specs = {name: module.adapter.spec for name, module in model.named_modules() if isinstance(module, Adapted)}
    (out / CONFIG_FILE).write_text(json.dumps({"format": "tunelab-bottleneck/1", "adapters": specs}, indent=2))
    save_file(adapter_state(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})


def load_(model: nn.Module, folder: Path) -> nn.Module:
    """Rebuild the saved adapters at their places in a freshly loaded base and load their weights (frozen)."""
    specs = json.loads((folder / CONFIG_FILE).read_text())["adapters"]
    for path, spec in specs.items():
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ConfigError(
                f"{folder}: an adapter belongs after '{path}', which this model does not have. Load the adapters "
                "onto the base model of the run that trained them."
            ) from None
        wrap_(model, path, Bottleneck(**spec))
    state = load_file(folder / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(".adapter." in k for k in missing):
        raise ConfigError(f"{folder}/{WEIGHTS_FILE} does not match {CONFIG_FILE}: the folder is damaged. Retrain.")
    freeze_all_(model)
    return model


METHOD = Method(
    name="adapter",
    config=AdapterConfig,
    apply_=apply_,
    save=save,
    load_=load_,
    freezes_base=True,
    artifact="adapter",
    mergeable=False,
)
