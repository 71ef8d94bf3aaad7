"""`tunelab train`, `tunelab validate` and `tunelab lr-find`: a config in, the recipe it describes run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console

from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import TunelabError
from tunelab.methods.trained import CONFIG_FILE, is_run
from tunelab.recipes.continual.run import run_continual
from tunelab.recipes.lr_find import run_lr_find
from tunelab.recipes.run import run_training
from tunelab.recipes.stages import run_stages

console = Console()


def train(args: argparse.Namespace) -> None:
    overrides = list(args.set or [])
    config_path = Path(args.config) if args.config else None
    if args.resume and config_path and is_run(config_path):
        config_path = config_path / CONFIG_FILE
    if args.data:
        overrides.append(f"data.train={Path(args.data).resolve()}")
    if config_path is None and not args.data:
        raise TunelabError(
            "Give a config file (`tunelab train my.yaml`) or a data file (`tunelab train --data x.jsonl`)."
        )
    if args.resume and config_path and (config_path / "continual.yaml").is_file():  # a continual run's folder
        # Read as written (no path resolution against the run folder); a run without output.name was named after
        # its config file, of which only the name (stem) is used.
        folder = config_path.resolve()
        raw = yaml.safe_load((folder / "continual.yaml").read_text())
        cfg = load_config(None, [f"output.dir={folder.parent}", *overrides], base=raw)
        config_path = Path(f"{folder.name}.yaml")
    else:
        cfg = load_config(config_path, overrides)
    recipe_for(cfg)(cfg, config_path=config_path, resume=args.resume, console=console)


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
