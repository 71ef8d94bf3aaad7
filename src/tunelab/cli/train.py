"""`tunelab train`, `tunelab validate` and `tunelab lr-find`: a config in, the recipe it describes run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import TunelabError
from tunelab.core.files import disk_full_as_error
from tunelab.core.schema import read_yaml_mapping
from tunelab.recipes.continual.run import run_continual
from tunelab.recipes.lr_find import run_lr_find
from tunelab.recipes.run import run_training
from tunelab.recipes.runs import resume_target
from tunelab.recipes.stages import run_stages

console = Console()


def train(args: argparse.Namespace) -> None:
    overrides = list(args.set or [])
    config_path = Path(args.config) if args.config else None
    if args.data:
        overrides.append(f"data.train={Path(args.data).resolve()}")
    if config_path is None and not args.data:
        raise TunelabError(
            "Give a config file (`tunelab train my.yaml`) or a data file (`tunelab train --data x.jsonl`)."
        )
    if args.resume_changed and not args.resume:
        raise TunelabError("--resume-changed goes with --resume: it accepts a changed config when resuming a run.")
    if args.resume and config_path and config_path.is_dir():
        cfg, config_path = _folder_config(config_path, overrides)
    else:
        cfg = load_config(config_path, overrides)
    recipe = recipe_for(cfg)
    # A disk that fills where tunelab did not expect to write is still a message, not a traceback.
    with disk_full_as_error(Path(cfg.output.dir), f"into {cfg.output.dir}"):
        recipe(cfg, config_path=config_path, resume=args.resume, resume_changed=args.resume_changed, console=console)


def _folder_config(folder: Path, overrides: list[str]) -> tuple[TunelabConfig, Path]:
    """The config of the run in `folder` (`tunelab train RUN_FOLDER --resume`), pointed at that folder itself
    rather than at the folder its output.dir and output.name (or the config's file name) would name."""
    file, where = resume_target(folder)
    # Read as written: paths in it were resolved when the run started, not against the run folder.
    raw, _ = read_yaml_mapping(file, "sections: model, data, method, ...")
    if file.name != "continual.yaml":
        cfg = load_config(None, [f"{k}={v}" for k, v in where.items()] + overrides, base=raw)
        return cfg, file
    # A continual run's output.name is also its task name when it has no stages: kept, and the folder found by
    # name (an unset name is the config file's stem).
    cfg = load_config(None, [f"output.dir={where['output.dir']}", *overrides], base=raw)
    if cfg.output.name not in (None, where["output.name"]):
        raise TunelabError(
            f"Cannot resume '{folder}': its continual.yaml names the run '{cfg.output.name}' (output.name), which is "
            "also its task name, but the folder is called differently. Rename the folder back to "
            f"'{cfg.output.name}' and resume that."
        )
    return cfg, Path(f"{where['output.name']}.yaml")


def recipe_for(cfg: TunelabConfig) -> Callable[..., object]:
    """The recipe a config describes: tasks in sequence (`continual:`), a run in stages (`stages:`), or one run."""
    if cfg.continual is not None:
        return run_continual
    return run_stages if cfg.stages else run_training


def validate(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, list(args.set or []))
    missing = [p for p in cfg.data.train + cfg.data.validation if not Path(p).is_file()]
    if missing:
        raise TunelabError(f"{args.config}: data file(s) not found: {', '.join(missing)}. Fix data.train/validation.")
    console.print(
        f"[green]ok[/]: {args.config} is valid (method {cfg.method.name}, model {cfg.model.source})", soft_wrap=True
    )


def lr_find(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, list(args.set or []))
    run_lr_find(cfg, config_path=Path(args.config), start=args.start, end=args.end, steps=args.steps, console=console)
