"""RoPE scaling: run a rotary-position model on rows longer than the context it was trained at.

`model.rope_scaling: {type: linear | dynamic | yarn, factor: F}` rewrites the loaded model's `rope_parameters` and
rebuilds its rotary-embedding modules from them (transformers' own implementations of each kind):

- `linear` (position interpolation): every position is divided by F, so F x the context maps onto the positions the
  model knows; short rows change too, which a short fine-tune at the new length repairs.
- `dynamic` (NTK-aware): the rotary base grows with the row's length once it passes the original context; rows within
  it are unchanged, so it needs no fine-tune to keep short-row quality.
- `yarn`: low frequencies interpolated, high ones kept, attention temperature corrected; the usual choice for a
  fine-tune at the new length.

The context a row may reach becomes F x the original (`context_length`). A run folder's config keeps the section, so
everything that loads the run again (eval, serve, merge) rebuilds the same scaling; a merged model's config.json
carries it for transformers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section

RopeType = Literal["linear", "dynamic", "yarn"]


class RopeScaling(Section):
    type: RopeType
    """`linear` (position interpolation), `dynamic` (NTK-aware base, only past the original context) or `yarn`."""
    factor: float = Field(gt=1, le=64)
    """How many times the original context the model should reach."""
    original_context: int | None = Field(default=None, ge=16)
    """The context the model was trained at (default: its config's `max_position_embeddings`)."""


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Where model configs keep their context length (Llama-style, GPT-2, and others)."""


def context_length(config: object) -> int | None:
    """How many positions a row may use (None if the config does not say): its context length, times the factor
    of a dynamic scaling (which keeps the original context in `max_position_embeddings`, the length where its base
    starts to grow)."""
    size = next((v for k in CONTEXT_KEYS if isinstance(v := getattr(config, k, None), int) and v > 0), None)
    if size is None:
        return None
    params = getattr(config, "rope_parameters", None) or {}
    kinds = [params] if "rope_theta" in params else [v for v in params.values() if isinstance(v, dict)]
    factors = [float(p["factor"]) for p in kinds if p.get("rope_type") == "dynamic" and p.get("factor")]
    return int(size * min(factors)) if factors else size


def scale_rope_(model: nn.Module, scaling: RopeScaling | None) -> nn.Module:
    """`model` with its rotary position embeddings rebuilt for `scaling` (unchanged when None); in place.

    Raises ConfigError when the model has no rotary embeddings to scale (learned positions, as GPT-2 and BERT have),
    or is scaled already.
    """
    if scaling is None:
        return model
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", type(model).__name__)
    params = getattr(config, "rope_parameters", None)
    rotary = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
              if type(child).__name__.endswith("RotaryEmbedding")]  # fmt: skip
    if not isinstance(params, dict) or not rotary:
        raise ConfigError(
            f"model.rope_scaling: the model ({kind}) has no rotary position embeddings to scale (its positions are "
            "learned or absent), so its context cannot be extended this way. Remove model.rope_scaling, or train "
            "with data.max_length within the model's context."
        )
    # One dict of settings, or one per layer type (Gemma 3's sliding and full attention layers): each is scaled.
    per_type = "rope_theta" not in params
    kinds = {k: v for k, v in params.items() if isinstance(v, dict)} if per_type else {"": params}
    scaled = [k for k, v in kinds.items() if v.get("rope_type", "default") != "default"]
    if not kinds or scaled:
        where = f" ({', '.join(scaled)} layers)" if per_type and scaled else ""
        raise ConfigError(
            f"model.rope_scaling: the model ({kind}) already uses "
            f"'{kinds[scaled[0]]['rope_type'] if scaled else 'unknown'}' RoPE scaling{where} (its config.json "
            "rope_parameters); a second one on top is not supported. Remove model.rope_scaling."
        )
    original = scaling.original_context or int(config.max_position_embeddings)  # type: ignore[union-attr]
    extra = {"original_max_position_embeddings": original} if scaling.type == "yarn" else {}
    rescaled = {k: {**v, "rope_type": scaling.type, "factor": float(scaling.factor), **extra} for k, v in kinds.items()}
    config.rope_parameters = rescaled if per_type else rescaled[""]  # type: ignore[union-attr]
    # dynamic: max_position_embeddings stays the length where the base starts to grow (context_length scales it).
    config.max_position_embeddings = original if scaling.type == "dynamic" else int(original * scaling.factor)  # type: ignore[union-attr]
    if getattr(config, "head_dim", 0) is None:  # Mixtral's config says None; transformers' dynamic and yarn read it
        config.head_dim = config.hidden_size // config.num_attention_heads  # type: ignore[union-attr]
    for parent, name, child in rotary:
        device = next(iter(child.buffers()), None)
        rebuilt = type(child)(config=getattr(child, "config", config))
        setattr(parent, name, rebuilt.to(device.device) if device is not None else rebuilt)
    return model
