"""Hybrid: several ways of learning in one model, e.g. LoRA on attention + the top layer in full + bottleneck
adapters (a task head joins any method through `tunelab.heads`).

Order of construction (and of loading): weights trained in full are chosen on the plain base, LoRA wraps the
base (peft), then adapters wrap sublayers. Saved as one folder: a standard PEFT adapter, the bottleneck files,
and `full_weights.safetensors` with every fully trained tensor under its plain base-model name.

Combinations that cannot work are refused with the reason: prompt-learning methods (prefix, prompt) and IA3 do
not share a peft model with LoRA; PiSSA/OLoRA move part of a weight into the adapter, so that weight cannot also
train in full and still be saved as an adapter for the original base.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, cast

from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section
from tunelab.methods import adapter, lora, lora_init
from tunelab.methods.adapter import AdapterConfig
from tunelab.methods.base import Method, freeze_all_, trainable_to_fp32_
from tunelab.methods.lora import LoraConfig
from tunelab.methods.peft_io import load_adapter_, task_type, wrap_
from tunelab.models.parts import base_model, decoder_layers

FULL_WEIGHTS = "full_weights.safetensors"
_NOT_COMBINABLE = {
    "prefix": "prefix tuning lives in peft's prompt-learning wrapper, which cannot also hold LoRA",
    "prompt": "prompt tuning lives in peft's prompt-learning wrapper, which cannot also hold LoRA",
    "ia3": "IA3 and LoRA are different peft tuner types, and one peft model holds one type",
}


class HybridConfig(Section):
    name: Literal["hybrid"] = "hybrid"
    """Combine LoRA, bottleneck adapters and fully trained layers/parameters in one model."""
    lora: LoraConfig | None = None
    """Low-rank adapters, with every option of method `lora` (dora, init, rank_pattern, ...)."""
    adapter: AdapterConfig | None = None
    """Bottleneck adapters, with every option of method `adapter`."""
    top_k_layers: int = Field(default=0, ge=0)
    """Train the last k transformer layers in full."""
    modules: list[str] = []
    """Train parameters whose dotted base-model name matches one of these regexes in full (e.g. 'norm')."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_uncombinable(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key, why in _NOT_COMBINABLE.items():
                if key in raw:
                    raise ValueError(
                        f"a hybrid cannot include '{key}': {why}. Use method {key} on its own, or combine lora, "
                        "adapter, top_k_layers and modules"
                    )
        return raw

    @model_validator(mode="after")
    def _at_least_two_parts(self) -> HybridConfig:
        parts = [self.lora is not None, self.adapter is not None, self.top_k_layers > 0 or bool(self.modules)]
        if sum(parts) < 2:
            raise ValueError(
                "a hybrid needs at least two of: lora, adapter, fully trained layers (top_k_layers / modules). "
                "For one of them use method lora, adapter or freeze directly"
            )
        return self


def plain_name(name: str) -> str:
    """A parameter's name in the unwrapped base model (peft's and the adapters' wrappers removed)."""
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.(base_layer|inner)(?=\.)", "", name)


def _fully_trained(model: nn.Module, cfg: HybridConfig) -> list[nn.Parameter]:
    chosen: dict[int, nn.Parameter] = {}
    if cfg.top_k_layers:
        _, layers = decoder_layers(model)
        if cfg.top_k_layers > len(layers):
            raise ConfigError(f"method.top_k_layers={cfg.top_k_layers} but the model has {len(layers)} layers.")
        chosen |= {id(p): p for layer in list(layers)[-cfg.top_k_layers :] for p in layer.parameters()}
    for pattern in cfg.modules:
        hits = {id(p): p for n, p in model.named_parameters() if re.search(pattern, n)}
        if not hits:
            raise ConfigError(f"method.modules: '{pattern}' matches no parameter name of {type(model).__name__}.")
        chosen |= hits
    return list(chosen.values())


def apply_(model: nn.Module, cfg: HybridConfig) -> nn.Module:
    full = _fully_trained(model, cfg)
    if cfg.lora is not None:
        lora.check_targets(model, cfg.lora)
        model = wrap_(model, lora.peft_config(cfg.lora, task_type(model)))
        if cfg.lora.init in ("pissa", "olora"):
            lora_init.remember_initial_(model)
            full_ids = {id(p) for p in full}
            moved = [n for n, m in model.named_modules() if isinstance(m, LoraLayer) and id(m.weight) in full_ids]
            if moved:
                raise ConfigError(
                    f"method.lora.init={cfg.lora.init} moves part of each adapted weight into the adapter, so those "
                    f"weights cannot also train in full ({plain_name(moved[0])}.weight is both). Narrow "
                    "top_k_layers / modules or lora.target_modules so they do not overlap, or use lora.init=default."
                )
    else:
        freeze_all_(model)
    for p in full:
        p.requires_grad_(True)
    trainable_to_fp32_(model)
    if cfg.adapter is not None:
        adapter.inject_(base_model(model), cfg.adapter)
    return model


def _is_part_of_an_adapter(name: str) -> bool:
    return "lora_" in name or ".adapter." in name or "modules_to_save" in name


def save(model: nn.Module, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):  # LoRA wrapped the base
        converted = lora_init.has_initial(model)
        state = lora_init.converted_state(model) if converted else get_peft_model_state_dict(model)
        config = lora_init.converted_config(model) if converted else cast(PeftModel, model).peft_config["default"]
        config.save_pretrained(str(out))
        # Adapters wrap sublayers after LoRA did, so LoRA's names carry `.inner`; a plain PEFT file has none.
        state = {k.replace(".inner.", "."): v.detach().contiguous() for k, v in state.items()}
        save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    if any(isinstance(m, adapter.Adapted) for m in model.modules()):
        adapter.save(base_model(model), out)
    full = {
        plain_name(n): p.detach().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad and not _is_part_of_an_adapter(n)
    }
    save_file(full, str(out / FULL_WEIGHTS), metadata={"format": "pt"})


def load_(model: nn.Module, folder: Path) -> nn.Module:
    if (folder / FULL_WEIGHTS).is_file():
        _, unexpected = model.load_state_dict(load_file(folder / FULL_WEIGHTS), strict=False)
        if unexpected:
            raise ConfigError(f"{folder}/{FULL_WEIGHTS} has weights this model lacks ({unexpected[:3]}): wrong base.")
    if (folder / "adapter_config.json").is_file():
        model = load_adapter_(model, folder)
    if (folder / adapter.CONFIG_FILE).is_file():
        adapter.load_(base_model(model), folder)
    freeze_all_(model)
    return model


METHOD = Method(
    name="hybrid",
    config=HybridConfig,
    apply_=apply_,
    save=save,
    load_=load_,
    freezes_base=True,
    artifact="adapter",
    mergeable=False,
)
