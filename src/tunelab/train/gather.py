"""Full (unsharded) copies of the trainable weights and the optimizer state of any training module, and putting
them back: torch's `torch.distributed.checkpoint.state_dict` API reads a plain module, DDP and FSDP (1 and 2)
alike; every process takes part in the gathering and the main process gets full CPU tensors, which restore into
any of them (one process included). A DeepSpeed engine's ZeRO-3 shards are gathered around the module inside it.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tunelab.train.zero import engine_module, gathered, is_engine

MODEL = "model."
"""Where the trained model sits in the training module; checkpoint weights are named as the model names them."""
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable weights of the model in `module`, on the main process (the other processes
    get {}). Every process must call it. Tied weights appear once, under the first name."""
    if is_engine(module):  # DeepSpeed: the training module inside, its ZeRO-3 shards gathered for the copy
        inner = engine_module(module)
        with gathered(inner, _trainable(inner)):
            return trainable_state(inner)
    full = cast(dict[str, torch.Tensor], get_model_state_dict(module, options=_GATHER))  # full: plain tensors
    names = {_clean(n) for n, p in _unwrapped(module).named_parameters() if p.requires_grad}
    # The model's weights only: techniques trained beside it keep their values in the loop state.
    return {k[len(MODEL) :]: v.contiguous() for k, v in full.items() if k in names and k.startswith(MODEL)}


def load_trainable_(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put full `weights` (as `trainable_state` returns them) into the model in `module`, each process taking
    its own shard. Every process must call it with the same weights."""
    if is_engine(module):
        inner = engine_module(module)
        with gathered(inner, _trainable(inner), write=True):
            load_trainable_(inner, weights)
        return
    set_model_state_dict(module, {MODEL + k: v for k, v in weights.items()}, options=_SCATTER)


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name, on the main process. Every process must call it."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return get_optimizer_state_dict(module, inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state_(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if all(isinstance(k, int) for k in state["state"]):  # written by `optimizer.state_dict()` before names were used
        optimizer.load_state_dict(state)
        return
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    # Not strict: a trainable weight that never had a gradient (a BERT pooler's LoRA under a head that reads the
    # hidden states) has no optimizer state to restore, and starts the resumed run without one, as it did before.
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(module, inner, _current_names(state), options=options)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _unwrapped(module: nn.Module) -> nn.Module:
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, nn.Module) else module  # DDP


def _clean(name: str) -> str:
    """A parameter name without the wrappers' own parts (FSDP1, activation checkpointing)."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


# Names in optimizer states written while the learned task uncertainties trained outside the training module:
# the module was nested under `trained.` and the uncertainties were `extra.0`.
_LEGACY = {"extra.0": "techniques.task_weighting.log_vars"}


def _current_names(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with parameter names of older checkpoints renamed to the training module's own."""
    if not any(isinstance(k, str) and k.startswith("trained.") for k in state["state"]):
        return state

    def rename(name: str) -> str:
        return _LEGACY.get(name, name.removeprefix("trained."))

    groups = [{**g, "params": [rename(n) for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {rename(k): v for k, v in state["state"].items()}, "param_groups": groups}
