"""Saving and loading peft-wrapped models: the PEFT adapter format, which peft and inference servers read directly."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from peft import PeftConfig, PeftModel
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.methods.base import trainable_to_fp32_
from tunelab.models.parts import output_head


def save_adapter(model: nn.Module, out: Path) -> None:
    """adapter_config.json + adapter_model.safetensors (only the adapter's weights)."""
    cast(PeftModel, model).save_pretrained(str(out), safe_serialization=True)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Around peft's wrapping: LoRA on expert tensors (target_parameters) makes peft match its own internal
    per-tensor patterns against the rank/alpha patterns and warn that they "did not match any targeted module";
    nothing the user set, so not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The following (rank|alpha)_pattern keys did not match")
        yield


def load_adapter_(model: nn.Module, folder: Path) -> nn.Module:
    """Wrap a freshly loaded base with the saved adapter (frozen, for inference)."""
    with quiet_peft():
        return PeftModel.from_pretrained(model, folder)


def task_type(model: nn.Module) -> str:
    """peft's task type: a causal LM gets the generation-aware wrapper, an encoder the plain feature one."""
    return "CAUSAL_LM" if output_head(model) is not None and hasattr(model, "generate") else "FEATURE_EXTRACTION"


def wrap_(model: nn.Module, peft_config: PeftConfig) -> nn.Module:
    """Wrap `model` with peft (which freezes the base in place); adapter weights stay fp32."""
    from peft import get_peft_model

    with quiet_peft():
        peft_model = get_peft_model(model, peft_config)
    trainable_to_fp32_(peft_model)
    return peft_model


def require_decoder(model: nn.Module, method: str) -> None:
    """Virtual-token methods prepend to a generating model's input; an encoder has nowhere to put them usefully."""
    if task_type(model) != "CAUSAL_LM":
        raise ConfigError(
            f"method '{method}' works on decoder (causal LM) models, and {type(model).__name__} is not one. "
            "Use lora, ia3, adapter or freeze with an encoder, or choose a causal-LM model.source."
        )
