"""Finding the parts of a model: under a peft wrapper or not, decoder or encoder, the layers, the body, the head.

Every layer above asks these questions of a model it did not build (a peft-wrapped causal LM, a bare encoder, a
prompt-tuned model); they are answered once, here.
"""

from __future__ import annotations

from typing import Protocol, cast

from torch import nn


class _Parts(Protocol):
    """The methods these questions are asked through. transformers models and peft wrappers have them (each a
    subset), nn.Module's type knows none: every call below is guarded by `hasattr`."""

    def get_base_model(self) -> nn.Module: ...
    def get_decoder(self) -> nn.Module: ...
    def get_input_embeddings(self) -> nn.Module | None: ...
    def get_output_embeddings(self) -> nn.Module | None: ...


def _parts(model: nn.Module) -> _Parts:
    return cast(_Parts, model)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself when it is not wrapped)."""
    return _parts(model).get_base_model() if hasattr(model, "get_base_model") else model


def is_decoder(model: nn.Module) -> bool:
    """Whether `model` (wrapped or not) is a causal language model: it has an output head and generates."""
    inner = base_model(model)
    head = _parts(inner).get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return head is not None and hasattr(inner, "generate")


def body(model: nn.Module) -> nn.Module:
    """The part of `model` that returns `last_hidden_state`: a causal LM's decoder, or the encoder itself."""
    inner = base_model(model)
    return _parts(inner).get_decoder() if hasattr(inner, "get_decoder") else inner


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The body and output head of a causal LM, or None when the forward must run whole (e.g. prompt tuning)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and (peft_config.is_prompt_learning or peft_config.is_adaption_prompt):
        return None
    inner = base_model(model)
    decoder = _parts(inner).get_decoder() if hasattr(inner, "get_decoder") else None
    head = _parts(inner).get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return (decoder, head) if decoder is not None and head is not None else None


def output_head(model: nn.Module) -> nn.Module | None:
    """The language-model head of a causal LM (wrapped or not); None for an encoder."""
    inner = base_model(model)
    return _parts(inner).get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None


def input_embeddings(model: nn.Module) -> nn.Module:
    """The token embedding layer of `model`, or of the model inside it (a head or a wrapper around a body)."""
    for candidate in (model, getattr(model, "model", None)):
        if candidate is not None and hasattr(candidate, "get_input_embeddings"):
            found = _parts(candidate).get_input_embeddings()
            if found is not None:
                return found
    raise ValueError(f"{type(model).__name__} has no input embeddings")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the largest ModuleList of same-type modules, with its dotted name."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or len({type(m) for m in module}) != 1:
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of transformer layers")
    return best
