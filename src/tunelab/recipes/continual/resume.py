"""The folder of a continual run, fresh or resumed (`tunelab train --resume`), and what a resume needs.

A resume finds where the stopped run got to from `continual_state.json`, written (atomically) after each stage's
post-stage work (Fisher, replay buffer, scores): the stages it lists are finished and are not trained again —
their weights, adapters, Fisher and accuracy rows are in the folder. The stage after them is picked up where it
stopped: from its checkpoints through the loop's own resume (as `stages:` runs do), or, when its training had
finished but not the work after it, from the trained weights saved for that window (`TRAINED_FILE`).

A resume is refused with a `ConfigError` when the config no longer describes the run it continues: another task
list (names, order, data files, method), another starting model or another `continual:` section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file, save
from torch import nn

from tunelab.config import TunelabConfig
from tunelab.core import safe_yaml
from tunelab.core.errors import ConfigError, RunError
from tunelab.core.files import write_bytes, write_text
from tunelab.recipes.run import RunResult, setup_training
from tunelab.recipes.runs import run_folder, run_path

CONFIG_FILE = "continual.yaml"
STATE_FILE = "continual_state.json"
TRAINED_FILE = "continual_trained.safetensors"
"""A stage's trained weights (the trainable ones), kept from the end of its training until the run's state lists
the stage as finished, so that a kill during the Fisher or the scoring does not mean training the stage again."""


def fresh_folder(cfg: TunelabConfig, config_path: Path | None) -> Path:
    """The run folder, created empty (an earlier run of the same name is replaced only with output.overwrite, and
    kept aside until the new run has started: `recipes.runs`)."""
    return run_folder(cfg, config_path, resume=False).resolve()  # stored paths must work from anywhere


def resume_folder(cfg: TunelabConfig, config_path: Path | None) -> Path:
    """The stopped run's folder, after checking that `cfg` still describes that run."""
    run_dir = run_path(cfg, config_path)
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise RunError(
            f"Cannot resume: '{run_dir}' holds no continual run ({CONFIG_FILE} is missing). Start the run without "
            "--resume, or point output.dir / output.name at the run you want to continue."
        )
    check_same_run(
        safe_yaml.load(safe_yaml.read_text(saved, "run config"), str(saved))[0], cfg.model_dump(mode="json"), saved
    )
    return run_dir.resolve()


def task_list(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks a (dumped) config trains, in order: name, method and data files."""
    if raw.get("stages"):
        sections = [(s["name"], s) for s in raw["stages"]]
    else:
        sections = [(raw["output"]["name"] or "task", raw)]
    return [
        {"name": name, "method": s["method"]["name"], "train": s["data"]["train"],
         "validation": s["data"]["validation"]}
        for name, s in sections
    ]  # fmt: skip


def check_same_run(saved: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    """Raise a ConfigError naming the first thing that matters for the results and differs between the config the
    run was started with (`saved`) and the one it is resumed with (`now`)."""
    checks = {
        "the task list (stage names, order, methods and data files)": task_list,
        "model.source": lambda raw: raw["model"]["source"],
        "the continual: section": lambda raw: raw["continual"],
    }
    for what, key in checks.items():
        before, after = key(saved), key(now)
        if before != after:
            raise ConfigError(
                f"Cannot resume the continual run in '{where.parent}': {what} differs from the config it was "
                f"started with ({where}). Started with {before}; now {after}. The finished stages' weights, Fisher, "
                "replay buffer and accuracy rows belong to the old config. Resume with the config saved in "
                f"{where}, or start a new run (another output.name, or output.overwrite=true)."
            )


def read_state(run_dir: str | Path) -> dict[str, Any] | None:
    """A continual run's state (tasks, matrix, stages, adapters, Fisher, buffer), or None if it has none yet."""
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the state atomically and durably: a kill or a power loss leaves the previous stage's state or this
    one, never half a file."""
    write_text(run_dir / STATE_FILE, json.dumps(state, indent=2), f"the continual run's state ({STATE_FILE})")


def save_trained(model: nn.Module, stage_dir: Path) -> Path:
    """Keep a finished stage's trainable weights until the stage's post-stage work is recorded."""
    trained = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
    write_bytes(stage_dir / TRAINED_FILE, save(trained), f"the stage's trained weights ({TRAINED_FILE})")
    return stage_dir / TRAINED_FILE


def reload_trained(plan: TunelabConfig, stage_dir: Path, console: Console):
    """The `RunResult` of a stage whose training finished before the run stopped: the model set up exactly as its
    training set it up (`setup_training`: same source, method, dtype), with the trained weights put back."""
    from accelerate import Accelerator

    setup = setup_training(plan, stage_dir, Accelerator(cpu=not torch.cuda.is_available()), console)
    params = dict(setup.model.named_parameters())
    for name, tensor in load_file(stage_dir / TRAINED_FILE).items():
        params[name].data.copy_(tensor)
    baseline_file = stage_dir / "eval_baseline.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else None
    final = json.loads((stage_dir / "eval.json").read_text())
    model = setup.model.eval()
    return RunResult(run_dir=stage_dir, baseline=baseline, final=final, model=model, body=setup.objective.body(model))
