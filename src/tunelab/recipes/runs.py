"""Run folders: where a run's files live, and loading a finished run (or any model source) for inference."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import RunError
from tunelab.methods.registry import METHODS
from tunelab.models.load import load_model, load_tokenizer, tokenizer_from_folder

CONFIG_FILE = "config.yaml"


def artifact_dir(run_dir: Path, method_name: str) -> Path:
    """Where the trained result is saved: `adapter/` for adapter methods, `model/` for whole-model methods
    (each method says which in `Method.artifact`)."""
    return run_dir / METHODS[method_name].artifact


def is_run(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def run_path(cfg: TunelabConfig, config_path: Path | None) -> Path:
    """Where a run's folder is: output.dir / (output.name, or the config file's stem, or `run`)."""
    return Path(cfg.output.dir) / (cfg.output.name or (config_path.stem if config_path else "run"))


def run_folder(cfg: TunelabConfig, config_path: Path | None, resume: bool) -> Path:
    """The run's folder: created fresh, replaced (output.overwrite), or reused (resume)."""
    run_dir = run_path(cfg, config_path)
    if resume:
        if not (run_dir / "checkpoints").is_dir():
            raise RunError(
                f"Cannot resume: '{run_dir}' has no checkpoints. Start the run without --resume, or point "
                "output.dir / output.name at the run you want to continue."
            )
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not is_run(run_dir):
            raise RunError(
                f"'{run_dir}' exists and is not a tunelab run folder, so tunelab will not write into it. "
                "Choose another output.dir or output.name."
            )
        # A run that stopped before its first step (a wrong data path, say) holds nothing worth keeping.
        trained = (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()
        if trained and not cfg.output.overwrite:
            raise RunError(
                f"Run folder '{run_dir}' already exists. Continue it with --resume, choose another output.name, "
                "or set output.overwrite=true to replace it."
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_config(run_dir: Path) -> TunelabConfig:
    """The resolved config a run was trained with."""
    return load_config(run_dir / CONFIG_FILE)


def load_for_inference(spec: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A trained run folder (base + adapter or whole model) or any model source, ready to generate."""
    path = Path(spec)
    if not is_run(path):
        return load_model(spec, dtype=dtype), load_tokenizer(spec)
    cfg = run_config(path)
    saved = artifact_dir(path, cfg.method.name)
    if not saved.is_dir():
        raise RunError(f"Run '{spec}' has no trained result in '{saved}': it did not finish. Resume it first.")
    method = METHODS[cfg.method.name]
    model = method.load_(load_model(cfg.model.source, dtype=dtype), saved)
    return model.eval(), tokenizer_from_folder(saved)
