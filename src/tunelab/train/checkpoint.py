"""Resumable checkpoints, written atomically: into a temporary folder first, then renamed into place, so a
kill at any moment leaves either the previous checkpoint or the new one, never half of one.

Weights and optimizer state are gathered with torch's `torch.distributed.checkpoint.state_dict` API, which reads
a plain module, DDP and FSDP (1 and 2) alike: every process takes part in the gathering, the main process alone
writes full (unsharded) tensors, and a checkpoint from any of them restores into any other, one process included.
The functions take the training module (the model under `model.`, possibly wrapped, or a DeepSpeed engine around
it) and the optimizer built over its parameters.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tunelab.core.errors import ConfigError
from tunelab.train.zero import ENGINE_DIR, engine_module, gathered, is_engine, load_engine_state_, save_engine_state

PREFIX = "step-"
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


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    *,
    main: bool = True,
) -> Path:
    """Write `folder/step-N` atomically from the main process and keep only the newest `keep` checkpoints.
    Every process must call it (the weights are gathered); only the one with `main` writes, except that under
    DeepSpeed each process writes its shard of the optimizer state into the engine's folder."""
    engine = is_engine(module)
    weights = trainable_state(module)
    optim = None if engine else optimizer_state(module, optimizer)  # DeepSpeed's is in the engine's folder
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if engine:
        torch.distributed.barrier()  # the folder exists before any process writes into it
        save_engine_state(module, tmp)
    if not main:
        return final
    save_file(weights, tmp / "trainable.safetensors")
    torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Restore trainable weights, optimizer, scheduler and RNG in place on every process; return the loop state."""
    extra = torch.load(path / "optimizer.pt", weights_only=False)
    if is_engine(module):  # weights, ZeRO's master weights and its sharded optimizer state, from the engine's folder
        load_engine_state_(module, path)
    elif extra["optimizer"] is None:
        raise ConfigError(
            f"The checkpoint {path} was written under DeepSpeed: its optimizer state is sharded in {path / ENGINE_DIR} "
            "and only a DeepSpeed engine reads it. Resume it with the same DeepSpeed launch."
        )
    else:
        load_trainable_(module, load_file(path / "trainable.safetensors"))
        load_optimizer_state_(module, optimizer, extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return json.loads((path / "state.json").read_text())


def save_weights(path: Path, module: nn.Module, *, main: bool = True) -> None:
    """The trainable weights alone (the best model so far), written atomically by the main process. Every
    process must call it."""
    weights = trainable_state(module)
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(weights, tmp)
        tmp.replace(path)


def load_weights_(path: Path, module: nn.Module) -> None:
    """Put weights written by `save_weights` back into the model in `module`. Every process must call it."""
    load_trainable_(module, load_file(path))


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
