"""Resumable checkpoints, written atomically and durably: into a temporary folder first, each file fsynced, then
renamed into place and the folder fsynced, so a kill or a power loss at any moment leaves either the previous
checkpoint or the new one, never half of one. A checkpoint lists its files and their sizes in `state.json`
(written last); one that does not read back whole is passed over for the one before it, with a warning.

Nothing in a checkpoint can run code when it is read: weights and optimizer moments are safetensors, the
optimizer's, scheduler's and RNG's other values JSON (`train.state_io`), DeepSpeed's own files are read with
`torch.load(weights_only=True)` (`train.zero`). Older checkpoints kept a pickle (`optimizer.pt`): they are refused
with an explanation, never loaded.

Weights and optimizer state are gathered in full (`train.gather`): every process takes part, the main process
alone writes, and a checkpoint from DDP, FSDP or one process restores into any other. The functions take the
training module (the model under `model.`, possibly wrapped, or a DeepSpeed engine around it) and the optimizer
built over its parameters.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save, save_file
from torch import nn

from tunelab.core.errors import ConfigError, DiskFullError, RunError
from tunelab.core.files import disk_full_as_error, ensure_space, fsync_dir, fsync_tree, sweep_temporaries, write_bytes
from tunelab.train.gather import load_optimizer_state_, load_trainable_, optimizer_state, trainable_state
from tunelab.train.state_io import read_state, state_bytes, write_state
from tunelab.train.zero import ENGINE_DIR, is_engine, load_engine_state_, save_engine_state

PREFIX = "step-"
TMP = ".tmp-"
"""A checkpoint being written: renamed to `step-N` once whole; swept away when a run starts."""
WEIGHTS = "trainable.safetensors"
TRAINING_STATE = "training_state"
"""`training_state.json` + `.safetensors`: optimizer, scheduler and RNG state, written by `train.state_io`."""
STATE = "state.json"
"""The loop state and the list of the checkpoint's files with their sizes; written last."""
IDENTITY = "config.json"
"""The run's config and data fingerprint when the checkpoint was written (what a resume compares against)."""
FORMAT = 2
LEGACY_FILE = "optimizer.pt"
"""Where older checkpoints kept optimizer, scheduler and RNG state: a pickle, which is never loaded."""
LEGACY = "legacy"


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as plain values and tensors (no pickle: `train.state_io` writes them)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc] - the legacy tuple form
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_python_rng(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng(saved: Any) -> tuple[Any, ...]:
    version, internal, gauss = saved
    return (int(version), tuple(int(x) for x in internal), gauss)


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
    identity: dict[str, Any] | None = None,
) -> Path:
    """Write `folder/step-N` atomically and durably from the main process and keep only the newest `keep`
    checkpoints. Every process must call it (the weights are gathered); only the one with `main` writes, except
    that under DeepSpeed each process writes its shard of the optimizer state into the engine's folder.
    `identity` (the run's config and data fingerprint) is stored beside, for a resume to compare against.

    The files go into `.tmp-step-N`, are fsynced, and the folder is renamed into place and its parent fsynced;
    a full disk is a `DiskFullError` that leaves the previous checkpoints as they were."""
    engine = is_engine(module)
    weights = trainable_state(module)
    optim = None if engine else optimizer_state(module, optimizer)  # DeepSpeed's is in the engine's folder
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f"{TMP}{PREFIX}{step:08d}"
    what = f"the checkpoint of step {step} ({tmp})"
    then = _intact(folder)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        needed = state_bytes(weights) + state_bytes(optim) + 2**20  # + headers, JSON and RNG states
        try:
            ensure_space(folder, needed, what, then)
        except DiskFullError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        needed = None
    try:
        if engine:
            torch.distributed.barrier()  # the folder exists before any process writes into it
            with disk_full_as_error(tmp, what, None, then):
                save_engine_state(module, tmp)
        if not main:
            return final
        with disk_full_as_error(tmp, what, needed, then):
            save_file(weights, tmp / WEIGHTS)
            extra = {"optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng_state()}
            write_state(tmp / TRAINING_STATE, extra)
            if identity is not None:
                (tmp / IDENTITY).write_text(json.dumps(identity, indent=2))
            files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            # Written last and listing every file with its size: a checkpoint whose files did not all reach the
            # disk whole (a power loss before the data was flushed) is recognised and passed over on resume.
            (tmp / STATE).write_text(json.dumps({**state, "step": step, "format": FORMAT, "files": files}, indent=2))
            fsync_tree(tmp)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, final)
    for old in sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; a checkpoint of the same step already there is moved aside first, so one of the two
    is in place at every moment."""
    aside = final.with_name(f"{TMP}old-{final.name}")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _intact(folder: Path) -> str:
    """What a full disk's message says to do: resume from the newest checkpoint, which is intact."""
    done = sorted(p.name for p in folder.glob(f"{PREFIX}*") if (p / STATE).is_file()) if folder.is_dir() else []
    if not done:
        return "run the command again (no checkpoint had been written yet)."
    return (
        f"resume from the previous checkpoint, which is intact ({folder / done[-1]}): "
        f"`tunelab train {folder.parent} --resume`."
    )


def sweep(folder: Path) -> None:
    """Remove what an interrupted save left in the checkpoint folder (`.tmp-*` folders, `.*.tmp` files)."""
    sweep_temporaries(folder)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint in `path` cannot be resumed from, or None when it reads back whole. Reads the JSON files
    and the safetensors headers, and compares every file's size with the one recorded when it was written."""
    if (path / LEGACY_FILE).is_file() and not (path / f"{TRAINING_STATE}.json").is_file():
        return LEGACY
    try:
        saved = json.loads((path / STATE).read_text())
        files = saved["files"]
        for name, size in files.items():
            actual = (path / name).stat().st_size
            if actual != size:
                return f"{name} holds {actual} bytes, {size} were written"
        for name in files:
            if name.endswith(".safetensors"):
                with safe_open(path / name, framework="pt"):
                    pass
        for name in (f"{TRAINING_STATE}.json", *([IDENTITY] if IDENTITY in files else [])):
            json.loads((path / name).read_text())
    except FileNotFoundError as exc:
        return f"{Path(exc.filename or '?').name} is missing"
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def find_checkpoint(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in `folder` that reads back whole, and one warning line for each newer one that
    does not (truncated or empty files: the next older is used). None when there is no checkpoint at all."""
    found = sorted((p for p in folder.glob(f"{PREFIX}*") if p.is_dir()), reverse=True) if folder.is_dir() else []
    warnings, broken, legacy = [], [], []
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, warnings
        if problem == LEGACY:
            legacy.append(path)
            continue
        broken.append(f"{path.name}: {problem}")
        warnings.append(f"warning: checkpoint {path} does not read back whole ({problem}); trying the one before it")
    if legacy:
        raise RunError(
            f"Cannot resume from {legacy[0]}: it was written by an older tunelab, which stored the optimizer and RNG "
            f"state as a pickle ({LEGACY_FILE}). Reading a pickle runs whatever code it holds, so tunelab no "
            "longer loads one: the checkpoint cannot be resumed safely. Start the run again (output.overwrite=true "
            "or another output.name), or finish it with the tunelab version that wrote it."
        )
    if broken:
        raise RunError(
            f"Cannot resume from {folder}: no checkpoint reads back whole ({'; '.join(broken)}). Start the run "
            "again (output.overwrite=true or another output.name)."
        )
    return None, warnings


def read_identity(path: Path) -> dict[str, Any] | None:
    """What the run was trained with when the checkpoint in `path` was written (`save_checkpoint`'s identity)."""
    file = path / IDENTITY
    return json.loads(file.read_text()) if file.is_file() else None


def load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Restore trainable weights, optimizer, scheduler and RNG in place on every process; return the loop state.
    Nothing is unpickled: JSON, safetensors, and under DeepSpeed its files read with `weights_only=True`."""
    if checkpoint_problem(path) == LEGACY:
        find_checkpoint(path.parent)  # raises the explanation
    extra = read_state(path / TRAINING_STATE)
    if is_engine(module):  # weights, ZeRO's master weights and its sharded optimizer state, from the engine's folder
        load_engine_state_(module, path)
    elif extra["optimizer"] is None:
        raise ConfigError(
            f"The checkpoint {path} was written under DeepSpeed: its optimizer state is sharded in {path / ENGINE_DIR} "
            "and only a DeepSpeed engine reads it. Resume it with the same DeepSpeed launch."
        )
    else:
        try:
            load_trainable_(module, load_file(path / WEIGHTS))
        except RuntimeError as exc:  # resumed on purpose with a config that changed the trainable weights' shapes
            if "size mismatch" not in str(exc):
                raise
            first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "")
            raise RunError(
                f"Cannot resume from {path}: its trained weights do not fit the model the config now builds ({first}). "
                "The method's settings (rank, target modules, ...) must stay those of the run; resume with its own "
                "config, or start a new run."
            ) from None
        load_optimizer_state_(module, optimizer, extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = json.loads((path / STATE).read_text())
    for key in ("files", "format"):
        state.pop(key, None)
    return state


def save_weights(path: Path, module: nn.Module, *, main: bool = True) -> None:
    """The trainable weights alone (the best model so far), written atomically and durably by the main process.
    Every process must call it."""
    weights = trainable_state(module)
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, save(weights), f"the best weights so far ({path})", _intact(path.parent))


def load_weights_(path: Path, module: nn.Module) -> None:
    """Put weights written by `save_weights` back into the model in `module`. Every process must call it."""
    load_trainable_(module, load_file(path))
