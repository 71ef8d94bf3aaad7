"""Experiment trackers (`output.report_to`): TensorBoard, MLflow, Weights & Biases and trackio receive what the
run folder holds, as it is written.

Through accelerate's tracker classes (one `start` / `store_init_configuration` / `log` / `finish` interface for
every tool), driven from here rather than through `Accelerator(log_with=...)`: the run's Accelerator is built
before the run folder is known, and a tracker must be started — and fail, if it cannot — before training.

What goes where: the resolved config as parameters (dotted keys), every metrics.jsonl line at its step (through
the loop's `on_metrics` hook), the data report's numbers as `data/...` at step 0 and its files, the baseline and
final evaluations as `eval_base/...` and `eval/...` (nested per-task tables flattened to `eval/<task>/<metric>`),
and for MLflow the trained adapter/model, the evaluation and diagnosis files as artifacts.

All of it works offline: TensorBoard writes event files into the run folder, MLflow defaults to a SQLite store
beside the run folders, W&B runs in offline mode inside the run folder (`wandb sync` uploads it later), and
trackio writes its local SQLite store.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker
from rich.console import Console

from tunelab.config import OutputSection, TunelabConfig
from tunelab.core.errors import ConfigError
from tunelab.core.logs import loggers_at
from tunelab.train.checkpoint import PREFIX
from tunelab.train.hooks import StopTraining

# What to install for each tracker, and the module whose presence says it is installed.
_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}
IDS_FILE = "trackers.json"
"""Run ids the trackers gave this run folder, so a resumed run continues the same MLflow run."""
_ARTIFACTS = ("eval.json", "eval_baseline.json", "predictions.jsonl", "predictions_base.jsonl", "diagnosis.json",
              "learning_curves.png", "report.html", "report.md", "data_report.json", "data_report.md",
              "rejects.jsonl", "config.yaml")  # fmt: skip


class RunTracker:
    """One run's trackers. Every method is a no-op without trackers (no `report_to`, or not the main process)."""

    def __init__(self, trackers: dict[str, GeneralTracker], run_dir: Path) -> None:
        self.trackers = trackers
        self.run_dir = run_dir
        self.last_step = 0

    def log_config(self, cfg: TunelabConfig) -> None:
        """The resolved config as parameters, one dotted key each (lists and empty sections as JSON text)."""
        params = dict(flatten_config(cfg.model_dump(mode="json")))
        for tracker in self.trackers.values():
            if isinstance(tracker, MLflowTracker):
                # MLflow parameters cannot change: a resumed run (the same MLflow run) adds only keys it lacks.
                logged = tracker.tracker.data.params
                tracker.store_init_configuration({k: v for k, v in params.items() if k not in logged})
            else:
                tracker.store_init_configuration(params)

    def where(self) -> str:
        """Where each tracker writes, for the run's console: `tensorboard: runs/x/tensorboard; mlflow: ...`."""
        places = []
        for name, tracker in self.trackers.items():
            if isinstance(tracker, TensorBoardTracker):
                places.append(f"tensorboard {tracker.logging_dir}")
            elif isinstance(tracker, MLflowTracker):
                import mlflow  # optional tracker package, imported only when the run reports to it

                places.append(f"mlflow {mlflow.get_tracking_uri()} (run {tracker.tracker.info.run_id})")
            elif isinstance(tracker, WandBTracker):
                places.append(f"wandb ({tracker.tracker.settings.mode}) {Path(tracker.tracker.dir).parent}")
            else:
                from trackio.utils import TRACKIO_DIR  # optional tracker package, imported when reported to

                places.append(f"{name} {TRACKIO_DIR}")
        return "tracking: " + "; ".join(places)

    def log_line(self, line: dict[str, Any]) -> None:
        """One metrics.jsonl line at its step: its numbers (not `step` itself, not flags such as `final`)."""
        step = int(line.get("step", self.last_step))
        self._log(numbers(line, exclude=("step",)), step)

    def log_data_report(self, report: dict[str, Any]) -> None:
        """The data report's numbers at step 0 as `data/...`; its files (report, rejects) as text or files."""
        self._log({f"data/{k}": v for k, v in numbers(report).items()}, 0)
        text = self.run_dir / "data_report.md"
        if "tensorboard" in self.trackers and text.is_file():
            self.trackers["tensorboard"].log({"data_report": text.read_text()}, step=0)
        for name in ("data_report.json", "data_report.md", "rejects.jsonl"):
            self._attach(self.run_dir / name)

    def log_eval(self, prefix: str, metrics: dict[str, Any], step: int) -> None:
        """An evaluation's metrics as `<prefix>/<metric>` (per-task tables as `<prefix>/<task>/<metric>`)."""
        self._log({f"{prefix}/{k}": v for k, v in numbers(metrics, exclude=("steps",)).items()}, step)

    def log_outputs(self, result_dir: Path | None, log_model: bool) -> None:
        """The run's evaluation, diagnosis and report files, and (MLflow) the trained result folder."""
        for name in _ARTIFACTS:
            self._attach(self.run_dir / name)
        mlflow = self.trackers.get("mlflow")
        if isinstance(mlflow, MLflowTracker) and log_model and result_dir is not None and result_dir.is_dir():
            mlflow.log_artifacts(str(result_dir), artifact_path=result_dir.name)

    def finish(self, status: str = "FINISHED") -> None:
        """Close every tracker; MLflow records `status` (FINISHED, FAILED or KILLED), W&B a non-zero exit code."""
        for name, tracker in self.trackers.items():
            if name == "mlflow":
                import mlflow  # optional tracker package, imported only when the run reports to it

                mlflow.end_run(status=status)
            elif isinstance(tracker, WandBTracker):
                tracker.tracker.finish(exit_code=0 if status == "FINISHED" else 1)
            elif name == "trackio":
                import trackio  # optional tracker package, imported only when the run reports to it

                # trackio.finish also forgets the run, which trackio would otherwise finish again at exit.
                with contextlib.redirect_stdout(io.StringIO()):  # trackio prints that it is closing
                    trackio.finish()
            else:
                tracker.finish()

    def _log(self, values: dict[str, float], step: int) -> None:
        if not values:
            return
        self.last_step = max(self.last_step, step)
        for tracker in self.trackers.values():
            tracker.log(values, step=step)

    def _attach(self, path: Path) -> None:
        if not path.is_file():
            return
        mlflow, wandb = self.trackers.get("mlflow"), self.trackers.get("wandb")
        if isinstance(mlflow, MLflowTracker):
            mlflow.log_artifact(str(path))
        if isinstance(wandb, WandBTracker):  # what the run's files folder holds is uploaded with the run (`wandb sync`)
            shutil.copy2(path, Path(wandb.tracker.dir) / path.name)


def flatten_config(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, bool | int | float | str]]:
    """`a.b.c: value` pairs of a nested config; what is not a scalar (a list, an empty section, null) as JSON."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from flatten_config(value, f"{prefix}{key}.")
        elif isinstance(value, bool | int | float | str):
            yield f"{prefix}{key}", value
        else:
            yield f"{prefix}{key}", json.dumps(value)


def numbers(values: dict[str, Any], exclude: tuple[str, ...] = (), prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) dict by `a/b` key; booleans, text and the `exclude` keys left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if key in exclude:
            continue
        if isinstance(value, dict):
            out.update(numbers(value, prefix=f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


@contextlib.contextmanager
def tracking(
    cfg: TunelabConfig, run_dir: Path, main: bool, start_from: Path | None, console: Console | None = None
) -> Iterator[RunTracker]:
    """Start the configured trackers (a `ConfigError` before anything trains when one is missing or unreachable),
    say on `console` where they write, log the config, and close them when the run ends: FINISHED, or FAILED /
    KILLED when it raises."""
    names = list(dict.fromkeys(cfg.output.report_to)) if main else []
    tracker = RunTracker(start_trackers(names, cfg.output, run_dir, start_from), run_dir)
    if not tracker.trackers:
        yield tracker
        return
    try:
        if console is not None:
            console.print(tracker.where(), highlight=False)
        tracker.log_config(cfg)
        yield tracker
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException as error:
        tracker.finish("KILLED" if isinstance(error, StopTraining) else "FAILED")
        raise
    tracker.finish()


def start_trackers(
    names: Sequence[str], out: OutputSection, run_dir: Path, start_from: Path | None
) -> dict[str, GeneralTracker]:
    """Each named tracker started, or a `ConfigError` naming the first that is not installed or cannot start."""
    for name in names:
        module, package = _PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"output.report_to lists {name!r}, but the {package} package is not installed. Install it "
                f"(`pip install {package}`, or every tracker with `pip install 'tunelab[track]'`) or remove "
                f"{name!r} from output.report_to."
            ) from error
    started: dict[str, GeneralTracker] = {}
    ids = _read_ids(run_dir) if start_from is not None else {}
    try:
        for name in names:
            started[name] = _start(name, out, run_dir, start_from, ids)
    except ConfigError:
        RunTracker(started, run_dir).finish("FAILED")
        raise
    mlflow = started.get("mlflow")
    if isinstance(mlflow, MLflowTracker):
        ids["mlflow_run_id"] = mlflow.tracker.info.run_id
        (run_dir / IDS_FILE).write_text(json.dumps(ids, indent=2) + "\n")
    return started


def _start(name: str, out: OutputSection, run_dir: Path, start_from: Path | None, ids: dict) -> GeneralTracker:
    try:
        if name == "tensorboard":
            return _tensorboard(out, run_dir, start_from)
        if name == "mlflow":
            return _mlflow(out, run_dir, ids.get("mlflow_run_id"))
        if name == "wandb":
            return _wandb(out, run_dir)
        return _trackio(out, run_dir)
    except ConfigError:
        raise
    except Exception as error:
        where = {"mlflow": f"the MLflow store {mlflow_uri(out)!r} (output.mlflow_tracking_uri)",
                 "wandb": f"W&B in {out.wandb_mode} mode (output.wandb_mode)"}.get(name, name)  # fmt: skip
        raise ConfigError(
            f"output.report_to: could not start {where}: {type(error).__name__}: {str(error)[:600]}. Nothing was "
            f"trained. Fix the store or its address, or remove {name!r} from output.report_to."
        ) from error


def _tensorboard(out: OutputSection, run_dir: Path, start_from: Path | None) -> GeneralTracker:
    # A resumed run rewrites the steps after its checkpoint: purge_step hides the old events from those steps on.
    resumed = int(start_from.name[len(PREFIX) :]) + 1 if start_from is not None else None
    logdir, name = (Path(out.tensorboard_dir), run_dir.name) if out.tensorboard_dir else (run_dir / "tensorboard", "")
    tracker = TensorBoardTracker(name, logdir, purge_step=resumed)
    tracker.start()
    return tracker


def mlflow_uri(out: OutputSection) -> str:
    """The MLflow store the run logs to: `output.mlflow_tracking_uri`, or a SQLite file in `output.dir`."""
    if out.mlflow_tracking_uri:
        return out.mlflow_tracking_uri
    return f"sqlite:///{(Path(out.dir) / 'mlflow.db').resolve()}"


def _mlflow(out: OutputSection, run_dir: Path, run_id: str | None) -> GeneralTracker:
    import mlflow  # optional tracker package, imported only when the run reports to it

    uri = mlflow_uri(out)
    if uri.startswith("file:") or ":" not in uri:
        # MLflow 3 refuses its folder store unless asked; output.mlflow_tracking_uri naming a folder is asking.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    # A SQLite store keeps artifacts beside it; a server or a file store chooses its own artifact root.
    artifacts = (Path(out.dir) / "mlflow-artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    tracker = MLflowTracker(out.mlflow_experiment, artifacts, run_id=run_id, run_name=run_dir.name)
    # One attempt with a short timeout: an unreachable server is an error now, not minutes of retries.
    with (
        _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"),
        loggers_at(logging.WARNING, "alembic", "mlflow"),
    ):
        tracker.start()
    return tracker


def _wandb(out: OutputSection, run_dir: Path) -> GeneralTracker:
    import wandb  # optional tracker package, imported only when the run reports to it

    # console="off": W&B would otherwise wrap stdout and stderr, under the progress bar.
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=60)
    tracker = WandBTracker(out.wandb_project, name=run_dir.name, dir=str(run_dir), mode=out.wandb_mode,
                           settings=settings)  # fmt: skip
    tracker.start()
    return tracker


def _trackio(out: OutputSection, run_dir: Path) -> GeneralTracker:
    tracker = TrackioTracker(out.trackio_project, name=run_dir.name, auto_log_cpu=False, auto_log_gpu=False)
    with contextlib.redirect_stdout(io.StringIO()):  # trackio prints where it logs; the run prints its own lines
        tracker.start()
    return tracker


def _read_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables set for the block and put back after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
