"""Loading an adapter must never change the base model: check it fits before peft touches the model, and undo
exactly what peft did if it still fails.

peft injects an adapter's layers into the model first and loads the tensors after, so an adapter saved for another
base (a different width) raises only once the model already routes through half-loaded, randomly initialised
layers; every later base request would then run through them. `check_adapter_fits` reads only
`adapter_config.json` and the safetensors header (shapes, no tensor data) and compares each tensor with the base
module it adapts. `ModuleSnapshot` records the module tree, trainability flags and top-level attributes before a
load and puts them back after a failure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from torch import nn

from tunelab.core.errors import TunelabError

# Saved keys look like `base_model.model.<module path>.lora_A.weight` (peft drops the adapter's own name).
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?:weight|bias))?$"
)
# Initialisations that rewrite the base weights when peft builds the layers (W -> W_res); tunelab's own exports
# of such runs are converted to plain LoRA, which loads without touching the base.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "eva", "loftq")


class AdapterMismatchError(TunelabError, ValueError):
    """An adapter that does not fit the served base model (another width, another architecture)."""


def check_adapter_fits(model: nn.Module, folder: Path, name: str) -> None:
    """Raise `AdapterMismatchError` naming the first tensor of the adapter in `folder` that does not fit `model`."""
    config = json.loads((folder / "adapter_config.json").read_text())
    init = str(config.get("init_lora_weights", "")).lower()
    if init.startswith(_BASE_REWRITING_INITS):
        raise AdapterMismatchError(
            f"The adapter '{name}' is saved with init_lora_weights={init!r}, which makes peft rewrite the base "
            "model's weights while loading it (every other request would change). Export it as plain LoRA "
            "(`tunelab export RUN --format peft` converts PiSSA/OLoRA runs)."
        )
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as tensors:
        shapes = {key: list(tensors.get_slice(key).get_shape()) for key in tensors.keys()}  # noqa: SIM118
    for key, shape in shapes.items():
        problem = _misfit(base, key.removeprefix(_PREFIX), shape)
        if problem is not None:
            raise AdapterMismatchError(
                f"The adapter '{name}' does not fit this server's base model: its tensor {key} has shape "
                f"{shape}, but {problem}. It was trained for another base model; serve it with that one."
            )


def _misfit(base: nn.Module, key: str, shape: list[int]) -> str | None:
    """Why the tensor `key` of `shape` cannot load into `base`, or None when it fits (or is not ours to judge)."""
    match = _LORA_KEY.match(key)
    if match is None:  # a whole module's weights (modules_to_save): the base parameter's shape, if it has one
        try:
            expected = list(base.get_parameter(key).shape)
        except AttributeError:
            return None
        return None if expected == shape else f"this base model's {key} has shape {expected}"
    path, part = match["module"], match["part"]
    try:
        module = base.get_submodule(path)
    except AttributeError:
        return f"this base model has no module {path} to adapt"
    # Already wrapped by another adapter's layer: the shapes are those of the layer inside.
    layer = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    sizes = _in_out(layer)
    if sizes is None:
        return None  # a layer kind whose shapes we do not know (convolutions): peft checks, the snapshot undoes
    inputs, outputs = sizes
    if part in ("lora_A", "lora_embedding_A"):  # [r, inputs]
        dim, want, what = len(shape) - 1, inputs, "inputs"
    else:  # lora_B and lora_embedding_B [outputs, r]; lora_B.bias and lora_magnitude_vector [outputs]
        dim, want, what = 0, outputs, "outputs"
    if len(shape) > dim and shape[dim] == want:
        return None
    expected = list(shape)
    if len(expected) > dim:
        expected[dim] = want
    return f"{path} here has {want} {what} (the tensor would need shape {expected})"


def _in_out(layer: nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of a layer LoRA adapts: Linear, Embedding, transformers' Conv1D (GPT-2)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, nn.Embedding):
        return layer.num_embeddings, layer.embedding_dim
    weight = getattr(layer, "weight", None)
    if type(layer).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:  # weight is [in, out]
        return int(weight.shape[0]), int(weight.shape[1])
    return None


class ModuleSnapshot:
    """The module tree of `model` (every module's children), its parameters' `requires_grad` and train/eval
    flags, and its own attribute names; `restore()` puts them back after a failed adapter load."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.children = [(m, dict(m._modules)) for m in model.modules()]
        self.training = [(m, m.training) for m in model.modules()]
        self.trainable = [(p, p.requires_grad) for p in model.parameters()]
        self.attributes = set(vars(model))

    def restore(self) -> None:
        # Children first: peft wraps a base layer by assigning a new module in its parent's place, and adds its
        # adapters as new entries of its own ModuleDicts; both are undone by restoring each parent's dict.
        for module, children in self.children:
            module._modules.clear()
            module._modules.update(children)
        for module, training in self.training:
            module.training = training
        for parameter, trainable in self.trainable:
            parameter.requires_grad_(trainable)
        for added in set(vars(self.model)) - self.attributes:  # e.g. the `peft_config` peft sets on a bare model
            delattr(self.model, added)
