"""One trial: draw its values, build its config, train it with the recipe `tunelab train` uses, and hand Optuna its
metrics; the validation curve is reported as it comes, so the pruner can stop a bad trial at an evaluation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from tunelab.config import TunelabConfig
from tunelab.core.errors import ConfigError, RunError
from tunelab.methods.base import trainable_parameters
from tunelab.recipes.run import RunResult, run_training
from tunelab.recipes.tune.space import suggest, trial_config
from tunelab.recipes.tune.study import ERROR_ATTR, SURPLUS_ATTR, StudyPlan, SurplusTrial, is_ticket
from tunelab.train.hooks import StopTraining

EXTRA_METRICS = ("train_seconds", "trainable_params")
"""Metrics a trial has besides its run's final evaluation."""


class TrialFailed(RunError):
    """A trial that cannot give a result (training diverged, the drawn values make an invalid config): recorded
    as a failed trial with its reason, and the study goes on."""


def trial_name(number: int) -> str:
    """A trial's run folder inside the study folder."""
    return f"trial-{number:04d}"


def make_objective(
    cfg: TunelabConfig, plan: StudyPlan, *, on_trial_start: Callable[[int, dict[str, Any]], None] | None = None
) -> Callable[[optuna.Trial], float | list[float]]:
    """The function Optuna calls per trial: trains `cfg` with the trial's values in `plan.folder/trial-NNNN/` and
    returns the study's metrics of it (a list for several)."""

    def objective(trial: optuna.Trial) -> float | list[float]:
        if not is_ticket(trial):
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise SurplusTrial(f"trial {trial.number} is past the study's trials")
        values = suggest(trial, plan.space, cfg)
        name = trial_name(trial.number)
        trial.set_user_attr("run", name)
        if on_trial_start is not None:
            on_trial_start(trial.number, values)
        try:
            # The base model's score is the same for every trial: evaluated once is enough (in no trial).
            run_cfg = trial_config(cfg, values, out_dir=plan.folder, name=name, baseline=False)
        except ConfigError as exc:
            trial.set_user_attr(ERROR_ATTR, str(exc))
            raise TrialFailed(str(exc)) from None
        reporter = _Reporter(trial, plan)
        start = time.perf_counter()
        try:
            result = run_training(run_cfg, console=Console(quiet=True), on_validation=reporter)
        except StopTraining:
            raise optuna.TrialPruned(f"pruned at step {reporter.step}") from None
        except RunError as exc:  # diverged (too many non-finite steps): a result of these values, not a crash
            trial.set_user_attr(ERROR_ATTR, str(exc))
            raise TrialFailed(str(exc)) from None
        metrics = trial_metrics(result, time.perf_counter() - start)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("steps", int(metrics.get("steps", 0)))
        missing = [m for m in plan.metrics if m not in metrics]
        if missing:
            have = ", ".join(sorted(metrics))
            raise ConfigError(
                f"tune.metric names {', '.join(missing)}, which trial {trial.number}'s run does not report. Its "
                f"metrics: {have}. Choose one of these (generation metrics such as exact_match need eval.generate "
                "and validation data)."
            )
        scores = [float(metrics[m]) for m in plan.metrics]
        return scores if plan.multi else scores[0]

    return objective


class _Reporter:
    """The trial's validation hook: reports `plan.prune_on` at each evaluation and stops a trial the pruner
    rejects."""

    def __init__(self, trial: optuna.Trial, plan: StudyPlan) -> None:
        self.trial, self.plan, self.step = trial, plan, 0

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        name = self.plan.prune_on
        if name is None or name not in metrics:
            return
        self.trial.report(self.plan.prune_sign * float(metrics[name]), step)
        if self.trial.should_prune():
            self.trial.set_user_attr("steps", step)
            raise StopTraining(f"trial {self.trial.number} pruned at step {step}")


def trial_metrics(result: RunResult, seconds: float) -> dict[str, float]:
    """The run's final evaluation plus `train_seconds` (the loop's own clock, else the trial's wall time) and
    `trainable_params`."""
    metrics = {k: float(v) for k, v in result.final.items() if isinstance(v, int | float)}
    metrics["train_seconds"] = _train_seconds(result.run_dir) or seconds
    metrics["trainable_params"] = float(trainable_parameters(result.model)[0])
    return metrics


def _train_seconds(run_dir: Path) -> float | None:
    """The last `elapsed_s` of the run's metrics.jsonl: time spent in the training loop."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    elapsed = [json.loads(line).get("elapsed_s") for line in path.read_text().splitlines() if line.strip()]
    found = [e for e in elapsed if isinstance(e, int | float)]
    return float(found[-1]) if found else None
