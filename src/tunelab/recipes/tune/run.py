"""`tunelab tune` as a function: one worker of a study over a config's `tune:` space, then the study's report.

Each trial is a whole run (`recipes.run.run_training`, as `tunelab train` runs it) in `<output.dir>/<study>/
trial-NNNN/`; the study's database, `trials.csv`/`.md`, `best.yaml` and plots sit beside them. Several workers
(this machine's `--workers`, or other machines on a shared storage URL) each call `run_study` on the same study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table

from tunelab.config import TunelabConfig
from tunelab.recipes.tune.objective import TrialFailed, make_objective
from tunelab.recipes.tune.report import best_trials, trial_rows, write_report
from tunelab.recipes.tune.space import search_space
from tunelab.recipes.tune.study import (
    StudyPlan,
    finished,
    hide_password,
    make_plan,
    open_study,
    real_trials,
    work,
)
from tunelab.tune_config import TuneSection


@dataclass
class StudyResult:
    plan: StudyPlan
    study: optuna.Study
    counts: dict[str, int]
    """Trials by state: complete, pruned, fail, running, waiting."""
    best: list[optuna.trial.FrozenTrial]
    """The best trial, or a multi-metric study's Pareto front (best first by the first metric)."""
    files: list[Path]


def run_study(
    cfg: TunelabConfig,
    *,
    config_path: Path | None = None,
    console: Console | None = None,
    seed_offset: int = 0,
    report: bool = True,
) -> StudyResult:
    """Run trials of the study `cfg.tune` describes until it has `tune.trials` finished ones (or `tune.timeout`
    passed), then write its report (`report`). `seed_offset` gives this worker its own sampler seed."""
    console = console or Console()
    tune = cfg.tune or TuneSection()
    plan = make_plan(cfg, config_path, search_space(cfg))
    study, created = open_study(plan, tune, seed=tune.seed + seed_offset)
    verb = "created" if created else "continuing"
    console.print(f"study [bold]{plan.name}[/] ({verb}): {len(plan.space)} keys, goal {_goal(plan)}", soft_wrap=True)
    console.print(f"  storage {hide_password(plan.storage)}; folder {plan.folder}", soft_wrap=True, highlight=False)

    def started(number: int, values: dict[str, Any]) -> None:
        shown = ", ".join(f"{k}={_value(v)}" for k, v in values.items())
        console.print(f"trial {number}: {shown}", soft_wrap=True, highlight=False)

    def after(study: optuna.Study) -> None:
        console.print(progress_line(study, plan, tune.trials))

    objective = make_objective(cfg, plan, on_trial_start=started)
    poll = min(2.0, float(tune.heartbeat))
    work(study, objective, timeout=tune.timeout, poll=poll, after_trial=after, catch=(TrialFailed,))
    files = write_report(study, plan, cfg) if report else []
    result = StudyResult(plan, study, state_counts(study), best_trials(study, plan), files)
    if report:
        print_summary(console, result)
    return result


def prepare_study(cfg: TunelabConfig, *, config_path: Path | None = None) -> StudyPlan:
    """Create (or check and continue) the study `cfg.tune` describes, without running a trial: the errors of a bad
    storage or another search space come here, before any worker starts."""
    tune = cfg.tune or TuneSection()
    plan = make_plan(cfg, config_path, search_space(cfg))
    open_study(plan, tune)
    return plan


def write_study_report(cfg: TunelabConfig, *, config_path: Path | None = None, console: Console | None = None) -> None:
    """Write the study's report as its database holds it now, and print its summary."""
    console = console or Console()
    tune = cfg.tune or TuneSection()
    plan = make_plan(cfg, config_path, search_space(cfg))
    study, _ = open_study(plan, tune)
    files = write_report(study, plan, cfg)
    print_summary(console, StudyResult(plan, study, state_counts(study), best_trials(study, plan), files))


def describe_study(cfg: TunelabConfig, *, config_path: Path | None = None, console: Console | None = None) -> StudyPlan:
    """Print what the study would search and how, touching nothing (`tunelab tune --dry-run`)."""
    console = console or Console()
    tune = cfg.tune or TuneSection()
    plan = make_plan(cfg, config_path, search_space(cfg))
    table = Table(title=f"study {plan.name}: {len(plan.space)} keys" + ("" if cfg.tune and cfg.tune.params else
                                                                          " (the default space)"))  # fmt: skip
    table.add_column("key")
    table.add_column("distribution")
    for key, dist in plan.space.items():
        spec = dist.model_dump(exclude_defaults=True, exclude={"type"})
        table.add_row(key, f"{dist.type} " + ", ".join(f"{k}={_value(v)}" for k, v in spec.items()))
    console.print(table)
    console.print(f"goal: {_goal(plan)}; {tune.trials} trials" + (f", timeout {tune.timeout:g} s" if tune.timeout
                  else "") + f"; sampler {tune.sampler}; {tune.workers} worker(s)", soft_wrap=True)  # fmt: skip
    console.print(f"storage {hide_password(plan.storage)}; folder {plan.folder}", soft_wrap=True, highlight=False)
    return plan


def trial_epochs_factor(cfg: TunelabConfig, base_epochs: float) -> float:
    """How many times the base run's epochs (`base_epochs`, as the run resolves them: `epochs: auto` chooses a
    number from the data) a trial trains on average (the middle of a tuned epoch range)."""
    dist = search_space(cfg).get("training.epochs")
    if dist is None or cfg.training.max_steps is not None or dist.type == "categorical" or base_epochs <= 0:
        return 1.0
    return (float(dist.low or 1) + float(dist.high or 1)) / 2 / base_epochs


def state_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by state (complete, pruned, fail, running, waiting), surplus ones left out."""
    trials = real_trials(study)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def progress_line(study: optuna.Study, plan: StudyPlan, total: int) -> Group:
    """A bar over the study's trials with the best so far and the pruned and failed counts."""
    done = sum(finished(t) for t in real_trials(study))
    counts = state_counts(study)
    best = best_trials(study, plan)
    if best and not plan.multi:
        best_text = f"best {plan.metrics[0]} {best[0].values[0]:.5g} (trial {best[0].number})"
    elif best:
        best_text = f"Pareto front: {len(best)} trials"
    else:
        best_text = "no completed trial yet"
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        "[bold]tune", ProgressBar(total=total, completed=min(done, total), width=30), f"{done}/{total}", best_text,
        f"{counts['pruned']} pruned, {counts['fail']} failed",
    )  # fmt: skip
    return Group(grid)


def print_summary(console: Console, result: StudyResult) -> None:
    plan, counts = result.plan, result.counts
    console.print(
        f"study {plan.name}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
    )
    rows = {r["trial"]: r for r in trial_rows(result.study, plan)}
    table = Table(title="Pareto front" if plan.multi else "Best trial")
    columns: Sequence[str] = ["trial", *plan.metrics, *sorted({p for t in result.best for p in t.params})]
    for column in columns:
        table.add_column(column)
    for trial in result.best:
        row = rows[trial.number]
        table.add_row(*(_value(row.get(c)) for c in columns))
    if result.best:
        console.print(table)
    for file in result.files:
        console.print(f"  {file}", highlight=False)


def _goal(plan: StudyPlan) -> str:
    goal = ", ".join(f"{d} {m}" for m, d in zip(plan.metrics, plan.directions, strict=True))
    return goal + (f"; pruned on {plan.prune_on}" if plan.prune_on else "")


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and not isinstance(v, bool) else ("" if v is None else str(v))
