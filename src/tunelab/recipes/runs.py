"""Run folders: where a run's files live, creating or reusing one, and the validated config a run was trained with.
(Loading a finished run's trained model is `tunelab.methods.trained.load_trained`.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import RunError
from tunelab.methods.trained import CONFIG_FILE, is_run


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
