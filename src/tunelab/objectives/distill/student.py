"""A student made from its teacher by keeping some of its transformer layers (DistilBERT, Sanh et al., 2019;
"shrink and fine-tune", Shleifer & Rush, 2020). It starts with the teacher's embeddings, head and kept layers,
so it begins far closer to the teacher than a random model of the same size."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

from peft import PeftModel
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from tunelab.core.errors import ConfigError
from tunelab.methods.trained import load_trained
from tunelab.models.parts import decoder_layers


def layers_to_keep(n_layers: int, keep: Literal["every_other"] | list[int]) -> list[int]:
    """`every_other`: layers 0, 2, 4, ... with the last one replaced by the teacher's last layer (the one its output
    head was trained on); or explicit 0-based indices."""
    if keep == "every_other":
        chosen = list(range(0, n_layers, 2))
        chosen[-1] = n_layers - 1
        return sorted(set(chosen))
    bad = [i for i in keep if not 0 <= i < n_layers]
    if bad or len(set(keep)) != len(keep) or not keep:
        raise ConfigError(f"Layers to keep {keep} must be distinct indices from 0 to {n_layers - 1}.")
    return sorted(keep)


def drop_layers_(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the transformer layers `keep` of `model`, in place, and renumber them so that the KV cache and
    per-layer settings (`config.layer_types`, sliding windows) still line up."""
    name, layers = decoder_layers(model)
    kept = nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                # torch types Module.__setattr__ for tensors and modules only; any attribute may be set
                module.layer_idx = new_index  # pyright: ignore[reportArgumentType]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], kept)
    config = cast(PreTrainedConfig, model.config)  # `model` is a transformers model
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


def make_student(teacher: str, out: str | Path, keep: Literal["every_other"] | list[int] = "every_other") -> Path:
    """Write a student model folder (weights, config, tokenizer) made from `teacher` (a model source or a finished
    run, adapters merged) by keeping the layers `keep`. Use the folder as `model.source`."""
    model, tokenizer = load_trained(teacher)
    if hasattr(model, "merge_and_unload"):  # a peft model: its adapters are folded into the weights
        model = cast(PeftModel, model).merge_and_unload()
    n_layers = len(decoder_layers(model)[1])
    drop_layers_(model, layers_to_keep(n_layers, keep))
    out = Path(out)
    cast(PreTrainedModel, model).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
