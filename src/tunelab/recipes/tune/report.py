"""What a study leaves in its folder: `trials.csv` and `trials.md` (values, metrics, state, seconds, steps per
trial), `best.yaml` (the best trial's complete config, which `tunelab train` runs as is) and PNG plots
(optimisation history, parameter importances, parallel coordinates, and the Pareto front of a multi-metric study).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display

import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState

from tunelab.config import TunelabConfig, dump_config
from tunelab.core.files import write_text
from tunelab.recipes.tune.space import trial_config
from tunelab.recipes.tune.study import ERROR_ATTR, StudyPlan, real_trials


def trial_rows(study: optuna.Study, plan: StudyPlan) -> list[dict[str, Any]]:
    """One row per trial: number, state, the study's metrics, every parameter, seconds, steps, run folder."""
    trials = real_trials(study)
    params = sorted({p for t in trials for p in t.params})
    extra = sorted({m for t in trials for m in t.user_attrs.get("metrics", {})} - set(plan.metrics))
    rows = []
    for t in trials:
        metrics = t.user_attrs.get("metrics", {})
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        for i, m in enumerate(plan.metrics):
            row[m] = t.values[i] if t.values is not None else metrics.get(m)
        row |= {p: t.params.get(p) for p in params}
        row |= {m: metrics.get(m) for m in extra}
        row["seconds"] = round(t.duration.total_seconds(), 2) if t.duration is not None else None
        row["steps"] = t.user_attrs.get("steps", _last_step(t))
        row["run"] = t.user_attrs.get("run")
        row["note"] = t.user_attrs.get(ERROR_ATTR, "") or _retry_note(t)
        rows.append(row)
    return rows


def best_trials(study: optuna.Study, plan: StudyPlan) -> list[FrozenTrial]:
    """The best completed trial (one metric) or the Pareto front ordered by the first metric (several)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return []
    front = study.best_trials if plan.multi else [study.best_trial]
    sign = 1.0 if plan.directions[0] == "minimize" else -1.0
    return sorted(front, key=lambda t: sign * (t.values or [math.inf])[0])


def write_report(study: optuna.Study, plan: StudyPlan, cfg: TunelabConfig) -> list[Path]:
    """trials.csv, trials.md, best.yaml and the plots in `plan.folder`; returns the files written."""
    rows = trial_rows(study, plan)
    written = [_write_csv(plan.folder / "trials.csv", rows)]
    best = best_trials(study, plan)
    written.append(_write_md(plan.folder / "trials.md", rows, study, plan, best))
    if best:
        written.append(write_best(plan.folder / "best.yaml", best[0], plan, cfg))
    written += write_plots(study, plan)
    return written


def write_best(path: Path, trial: FrozenTrial, plan: StudyPlan, cfg: TunelabConfig) -> Path:
    """The config of `trial` as a file `tunelab train` runs as is: no tune: section, data paths absolute, the run
    folder `<output.dir>/<study>-best`."""
    best = trial_config(cfg, trial.params, out_dir=Path(cfg.output.dir), name=f"{plan.name}-best")
    data = best.data.model_copy(
        update={
            "train": [str(Path(p).resolve()) for p in best.data.train],
            "validation": [str(Path(p).resolve()) for p in best.data.validation],
        }
    )
    best = best.model_copy(update={"data": data, "output": best.output.model_copy(update={"overwrite": False})})
    scores = ", ".join(f"{m} {v:.6g}" for m, v in zip(plan.metrics, trial.values or [], strict=False))
    head = f"# Best trial of study '{plan.name}': trial {trial.number} ({scores}). Run: tunelab train {path}\n"
    write_text(path, head + dump_config(best))
    return path


def write_plots(study: optuna.Study, plan: StudyPlan) -> list[Path]:
    """PNG plots of the study; a plot that needs more trials than there are is left out."""
    viz = optuna.visualization.matplotlib
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return []
    target = None if not plan.multi else (lambda t: t.values[0])
    name = plan.metrics[0]
    plots: list[tuple[str, Any]] = [
        ("history.png", lambda: viz.plot_optimization_history(study, target=target, target_name=name)),
        ("parallel_coordinates.png", lambda: viz.plot_parallel_coordinate(study, target=target, target_name=name)),
    ]
    params = {p for t in done for p in t.params}
    if len(done) >= 2 and len(params) >= 2:
        plots.append(("importances.png", lambda: viz.plot_param_importances(study, target=target, target_name=name)))
    if plan.multi:
        plots.append(("pareto_front.png", lambda: viz.plot_pareto_front(study, target_names=plan.metrics)))
    written = []
    for file, draw in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances of parameters that never varied: nothing to show
        figure = _figure_of(axes)
        figure.tight_layout()
        figure.savefig(plan.folder / file, dpi=100)
        plt.close(figure)
        written.append(plan.folder / file)
    return written


def _figure_of(axes: Any) -> Any:
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.get_figure()


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, out.getvalue())
    return path


def _write_md(
    path: Path, rows: Sequence[dict[str, Any]], study: optuna.Study, plan: StudyPlan, best: list[FrozenTrial]
) -> Path:
    states = [r["state"] for r in rows]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail", "running") if s in states)
    goal = ", ".join(f"{m} ({d})" for m, d in zip(plan.metrics, plan.directions, strict=True))
    lines = [f"# Study {plan.name}", "", f"{len(rows)} trials: {counts}. Metric: {goal}.", ""]
    if best:
        label = "Pareto front" if plan.multi else "Best"
        lines.append(f"{label}: " + ", ".join(f"trial {t.number}" for t in best) + " (best.yaml: trial "
                     f"{best[0].number}).")  # fmt: skip
        lines.append("")
    if rows:
        keys = list(rows[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(r[k]) for k in keys) + " |" for r in rows]
    write_text(path, "\n".join(lines) + "\n")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:200]


def _last_step(trial: FrozenTrial) -> int | None:
    return max(trial.intermediate_values) if trial.intermediate_values else None


def _retry_note(trial: FrozenTrial) -> str:
    retried = trial.system_attrs.get("failed_trial")
    if retried is not None:
        return f"rerun of trial {retried}"
    return "its worker stopped (run again)" if trial.state == TrialState.FAIL else ""
