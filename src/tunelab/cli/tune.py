"""`tunelab tune`: a hyperparameter study over a config's `tune:` section, run by this process and, with
`--workers K`, K-1 more worker processes on the same study (each logs to `<study folder>/worker-<k>.log`);
`tunelab plan` and `tune --dry-run`: the cost of a run (and a study) before anything trains."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tunelab.config import load_config
from tunelab.core.errors import TunelabError
from tunelab.core.files import disk_full_as_error
from tunelab.recipes.plan import plan_run, print_plan
from tunelab.recipes.tune.run import describe_study, prepare_study, run_study, trial_epochs_factor, write_study_report

console = Console()


def tune(args: argparse.Namespace) -> None:
    overrides = list(args.set or [])
    flags = {"trials": args.trials, "timeout": args.timeout, "storage": args.storage, "study": args.study,
             "workers": args.workers, "seed": args.seed}  # fmt: skip
    overrides += [f"tune.{key}={value}" for key, value in flags.items() if value is not None]
    cfg = load_config(args.config, overrides)
    workers = cfg.tune.workers if cfg.tune is not None else 1
    if workers > 1 and cfg.training.num_threads is None:  # the cores are shared out, not fought over
        threads = f"training.num_threads={max(1, (os.cpu_count() or 1) // workers)}"
        overrides.append(threads)
        cfg = load_config(args.config, overrides)
    config_path = Path(args.config)
    if args.dry_run:
        describe_study(cfg, config_path=config_path, console=console)
        trials = cfg.tune.trials if cfg.tune is not None else None
        plan = plan_run(cfg)
        print_plan(console, plan, trials=trials, epochs_factor=trial_epochs_factor(cfg, plan.epochs))
        return
    with disk_full_as_error(Path(cfg.output.dir), f"into {cfg.output.dir}"):
        plan = prepare_study(cfg, config_path=config_path)  # created once, before any worker asks for a trial
        children = [_start_worker(args, overrides, k, plan.folder) for k in range(1, workers)]
        try:
            run_study(cfg, config_path=config_path, console=console, seed_offset=args.worker_index, report=False)
        finally:
            failed = [k for k, child in enumerate(children, start=1) if child.wait() != 0]
        write_study_report(cfg, config_path=config_path, console=console)
    if failed:
        logs = ", ".join(str(plan.folder / f"worker-{k}.log") for k in failed)
        raise TunelabError(f"Worker(s) {', '.join(map(str, failed))} of the study stopped with an error: see {logs}.")


def plan(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, list(args.set or []))
    print_plan(console, plan_run(cfg, probe_steps=args.probe_steps))


def _start_worker(args: argparse.Namespace, overrides: list[str], index: int, folder: Path) -> subprocess.Popen:
    """Another worker process on the same study: the same config and overrides, one worker, its own seed."""
    command = [sys.executable, "-m", "tunelab.cli", "tune", args.config, "--workers", "1",
               "--worker-index", str(index)]  # fmt: skip
    for item in overrides:
        if not item.startswith("tune.workers="):
            command += ["--set", item]
    log = (folder / f"worker-{index}.log").open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
