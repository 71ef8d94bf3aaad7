"""A continual run: tasks trained one after another, each stage a whole `run_training` in its own sub-folder,
with replay, EWC or an adapter per task around it, and every task scored after every stage.

    setup (earlier run's state, validation files) → for each stage: replay rows → train (EWC penalty in the loop)
    → Fisher → buffer → score every task → continual.json / continual.md

The tasks are the config's `stages:` (task name = stage name), or the run's own sections as one task (named
`output.name`). With `model.source` set to an earlier continual run folder, the run continues it: its tasks,
accuracy rows, replay buffer, Fisher and adapters carry over, and training starts from its last weights. A stopped
run resumes with `resume=True` (`tunelab train --resume`): finished stages are not trained again (`continual.resume`).

Composition for `lora_per_task` is routing: each task's prompts go to that task's adapter on the shared frozen
base (`load_task_model`); a task not trained yet is answered by the base. Nothing is averaged or merged, so no
task is forgotten, at the price of needing the task tag at inference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from torch import nn

from tunelab.config import ContinualSection, OutputSection, TunelabConfig, dump_config
from tunelab.core.device import use_bf16
from tunelab.core.errors import ConfigError, RunError
from tunelab.core.files import write_text
from tunelab.methods.registry import METHODS
from tunelab.methods.trained import artifact_dir
from tunelab.models.load import load_model, load_tokenizer, resolve_source
from tunelab.recipes.continual.replay import ReservoirBuffer
from tunelab.recipes.continual.report import continual_report
from tunelab.recipes.continual.resume import (
    CONFIG_FILE,
    STATE_FILE,
    TRAINED_FILE,
    fresh_folder,
    read_state,
    reload_trained,
    resume_folder,
    save_trained,
    write_state,
)
from tunelab.recipes.continual.tasks import (
    draw_replay,
    exact_match,
    fisher_after_stage,
    read_examples,
    task_rows,
    write_rows,
)
from tunelab.recipes.run import generation_budget, run_training
from tunelab.recipes.runs import ReplacedRun, replacing
from tunelab.recipes.stages import stage_config, stage_weights

BUFFER_FILE = "replay_buffer.json"


def run_continual(
    cfg: TunelabConfig,
    *,
    config_path: Path | None = None,
    resume: bool = False,
    resume_changed: bool = False,
    console=None,
):
    """Train the tasks in order and write the accuracy matrix; returns the last stage's `RunResult` (None when a
    resume finds every stage finished). `resume` continues a stopped run: see `continual.resume`
    (`resume_changed` accepts a stage checkpoint's changed config, as `run_training` does). A run replaced by
    `output.overwrite` is dropped once the first stage has trained (put back if it fails before)."""
    console = console or Console()
    if cfg.continual is None:
        raise ConfigError(
            "The config has no `continual:` section; run_continual trains tasks one after another as it describes. "
            "`tunelab train` picks the right recipe; in Python call run_training or run_stages."
        )
    run_dir = resume_folder(cfg, config_path) if resume else fresh_folder(cfg, config_path)
    with replacing(run_dir) as replaced:
        return _run(cfg, run_dir, resume, resume_changed, console, replaced)


def _run(cfg: TunelabConfig, run_dir: Path, resume: bool, resume_changed: bool, console, replaced: ReplacedRun):
    cont = cast(ContinualSection, cfg.continual)
    previous = read_state(cfg.model.source)
    saved = read_state(run_dir) if resume else None  # where the stopped run got to
    write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    start = saved or previous
    base = start["base"] if start else cfg.model.source
    source = start["source"] if start else cfg.model.source
    if cfg.stages:
        plans = [stage_config(cfg, k, source, run_dir) for k in range(len(cfg.stages))]
    else:
        own = OutputSection(dir=str(run_dir), name=cfg.output.name or "task", overwrite=cfg.output.overwrite)
        plans = [cfg.model_copy(update={"output": own})]
    plans = [p.model_copy(update={"continual": None}) for p in plans]
    names = [cast(str, p.output.name) for p in plans]  # stage_config names each plan's output, as `own` is
    tasks: list[dict[str, Any]] = list(previous["tasks"]) if previous else []
    _check(plans, names, [t["name"] for t in tasks], cont.lora_per_task)
    for plan, name in zip(plans, names, strict=True):
        path = write_rows(run_dir / "tasks" / f"{name}.jsonl", task_rows(plan.data.validation, name))
        tasks.append({"name": name, "validation": str(path), "system_prompt": plan.data.system_prompt})
    matrix = [row + [None] * (len(tasks) - len(row)) for row in start["matrix"]] if start else []
    stages = list(start["stages"]) if start else []
    done = len(stages) - len(previous["stages"] if previous else []) if saved else 0  # stages of this run finished
    adapters: dict[str, str] = dict(start["adapters"]) if start else {}
    ewc_file = start.get("ewc") if start else None
    buffer = _buffer(cont, previous)
    tokenizer = load_tokenizer(resolve_source(base))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(cfg.training.precision, device)
    examples = {t["name"]: read_examples(Path(t["validation"])) for t in tasks}

    def score(model_for: Any, plan: TunelabConfig) -> list[float]:
        row = []
        for task in tasks:
            chosen = examples[task["name"]]
            budget = generation_budget(plan.eval, tokenizer, chosen[: cont.eval_examples])
            row.append(exact_match(
                model_for(task["name"]), tokenizer, chosen, max_examples=cont.eval_examples, max_new_tokens=budget,
                batch_size=plan.eval.batch_size, system_prompt=task["system_prompt"], bf16=bf16,
            ))  # fmt: skip
        return row

    baseline = start.get("baseline") if start else None
    if cont.baseline and baseline is None:
        first = load_model(resolve_source(source), dtype=torch.float32).to(device).eval()
        baseline = score(lambda _: first, plans[0])
        del first
    state, result = saved, None
    for k, (plan, name) in enumerate(zip(plans, names, strict=True)):
        own_rows = task_rows(plan.data.train, name)
        if k < done:  # finished before the run stopped: its results are in the saved state and the folder
            (Path(plan.output.dir) / name / TRAINED_FILE).unlink(missing_ok=True)
            if cont.replay is not None:
                buffer.extend(own_rows)  # the seeded reservoir sees the same stream, so it holds the same rows
            continue
        console.rule(f"continual stage {len(stages) + 1}: task {name}")
        record: dict[str, Any] = {"stage": name, "train_rows": len(own_rows), "replayed": 0}
        data, training = plan.data, plan.training
        if cont.replay is not None and len(buffer):
            drawn = draw_replay(buffer.items, len(own_rows), cont.replay.fraction, cont.replay.seed + len(stages))
            replay_file = write_rows(run_dir / "replay" / f"{name}.jsonl", drawn)
            data = data.model_copy(update={"train": [*data.train, str(replay_file)]})
            record["replayed"] = len(drawn)
        if cont.ewc is not None and ewc_file is not None:
            training = training.model_copy(update={"ewc_state": ewc_file, "ewc_lambda": cont.ewc.lam})
        model_source = base if cont.lora_per_task else source
        # A resumed stage folder without a checkpoint holds nothing worth keeping: it is started again.
        output = plan.output.model_copy(update={"overwrite": True}) if resume else plan.output
        plan = plan.model_copy(update={"data": data, "training": training, "output": output,
                                       "model": plan.model.model_copy(update={"source": model_source})})  # fmt: skip
        stage_dir = Path(output.dir) / name  # the plan's output is named after its task
        if resume and (stage_dir / TRAINED_FILE).is_file():  # trained; stopped in the Fisher or the scoring
            result = reload_trained(plan, stage_dir, console)
        else:
            started = resume and (stage_dir / "checkpoints").is_dir()
            result = run_training(plan, resume=started, resume_changed=resume_changed, console=console)
            save_trained(result.model, stage_dir)
        replaced.drop()
        if cont.ewc is not None:
            ewc_file = str(fisher_after_stage(
                result.model, tokenizer, plan.data, own_rows, samples=cont.ewc.fisher_samples,
                seed=plan.training.seed, bf16=bf16, previous=ewc_file, out_dir=stage_dir, task=name,
            ))  # fmt: skip
        if cont.replay is not None:
            buffer.extend(own_rows)
            write_text(run_dir / BUFFER_FILE, json.dumps(buffer.state_dict()))
        if cont.lora_per_task:
            adapters[name] = str(artifact_dir(stage_dir, plan.method.name))
        stages.append(record)
        matrix.append(score(_router(result.model, name, adapters, base, plan, device), plan))
        source = base if cont.lora_per_task else stage_weights(stage_dir, plan)
        state = {"base": base, "source": source, "tasks": tasks, "stages": stages, "matrix": matrix,
                 "adapters": adapters, "ewc": ewc_file, "baseline": baseline,
                 "method": plan.method.name, "buffer": str(run_dir / BUFFER_FILE) if cont.replay else None}  # fmt: skip
        write_state(run_dir, state)
        (stage_dir / TRAINED_FILE).unlink()  # the stage is recorded as finished: its weights are in its folder
        write_report(run_dir, state)
    if result is None and state is not None:  # every stage had finished: the report may not have been written
        write_report(run_dir, state)
    return result


def _router(trained: nn.Module, task: str, adapters: dict[str, str], base: str, plan: TunelabConfig, device):
    """Which model answers each task: the model just trained, or with `lora_per_task` the task's own adapter
    (the base for a task not trained yet)."""
    if not adapters:
        return lambda _: trained
    loaded: dict[str, nn.Module] = {task: trained}

    def model_for(name: str) -> nn.Module:
        if name not in loaded:
            model = load_model(resolve_source(base), dtype=torch.float32)
            if name in adapters:
                model = METHODS[plan.method.name].load_(model, Path(adapters[name]))
            loaded[name] = model.to(device).eval()
        return loaded[name]

    return model_for


def load_task_model(run_dir: str | Path, task: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model that answers `task` in a `lora_per_task` run: the base with that task's adapter (routing)."""
    state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    if task not in state["adapters"]:
        known = ", ".join(state["adapters"]) or "(none)"
        raise RunError(f"Run '{run_dir}' has no adapter for task '{task}'. Its task adapters: {known}.")
    model = load_model(resolve_source(state["base"]), dtype=dtype)
    return METHODS[state["method"]].load_(model, Path(state["adapters"][task])).eval()


def write_report(run_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """continual.json and continual.md: the matrix (rows: after each stage, columns: every task) and the summaries
    over the tasks trained so far."""
    names = [t["name"] for t in state["tasks"]]
    done = len(state["matrix"])
    report = continual_report(names[:done], [row[:done] for row in state["matrix"]], _first(state, done))
    payload = {**report.to_dict(), "all_tasks": names, "full_matrix": state["matrix"], "stages": state["stages"],
               "baseline": state["baseline"]}  # fmt: skip
    write_text(run_dir / "continual.json", json.dumps(payload, indent=2))
    write_text(run_dir / "continual.md", matrix_markdown(names, state["matrix"], state["baseline"], report))
    return payload


def _first(state: dict[str, Any], done: int) -> list[float] | None:
    baseline = state["baseline"]
    return baseline[:done] if baseline is not None and None not in baseline[:done] else None


def matrix_markdown(names: list[str], matrix: list[list[float | None]], baseline: list | None, report) -> str:
    """The full task x after-stage matrix (exact match, %), then the summaries."""
    cell = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| after stage | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    if baseline is not None:
        lines.append("| 0: start | " + " | ".join(cell(v) for v in baseline) + " |")
    for i, row in enumerate(matrix):
        lines.append(f"| {i + 1}: {names[i]} | " + " | ".join(cell(v) for v in row) + " |")
    summary = report.to_markdown().split("\n\n", 1)[1]
    return (
        "Exact match (%) on each task's held-out validation after each stage.\n\n" + "\n".join(lines) + "\n\n" + summary
    )


def _buffer(cont: Any, previous: dict[str, Any] | None) -> ReservoirBuffer:
    saved = previous.get("buffer") if previous else None
    if cont.replay is not None and saved and Path(saved).is_file():
        return ReservoirBuffer.from_state(json.loads(Path(saved).read_text()))
    return ReservoirBuffer(cont.replay.buffer_size if cont.replay else 1, cont.replay.seed if cont.replay else 0)


def _check(plans: list[TunelabConfig], names: list[str], earlier: list[str], lora_per_task: bool) -> None:
    for plan, name in zip(plans, names, strict=True):
        where = f"continual task '{name}'"
        if plan.objective.name != "sft":
            raise ConfigError(
                f"{where}: objective '{plan.objective.name}' is not supported; continual runs train chat tasks with "
                "sft and score them by exact match. Use objective: sft for every stage."
            )
        if not plan.data.validation:
            raise ConfigError(
                f"{where}: data.validation is empty. A continual run scores every task after every stage on that "
                "task's own held-out rows: give each stage a validation file (its rows are copied into the run)."
            )
        if lora_per_task and METHODS[plan.method.name].artifact != "adapter":
            raise ConfigError(
                f"{where}: continual.lora_per_task needs an adapter method (lora, dora, ...), not "
                f"'{plan.method.name}'. Set method: lora, or turn lora_per_task off."
            )
    seen = list(earlier)
    for name in names:
        if name in seen:
            raise ConfigError(
                f"Continual task name '{name}' is used twice (stage names and earlier runs' tasks must differ). "
                "Give the stage another name."
            )
        seen.append(name)
