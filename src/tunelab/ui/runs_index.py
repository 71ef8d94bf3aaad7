"""What the dashboard knows about a runs folder: each run's summary (status, objective, method, model, best
metrics, age), read from the files `tunelab train` leaves, as they are.

A run folder is read defensively: a missing config.yaml, a config that does not parse or a metrics.jsonl line cut
short by a crash marks the run `corrupt` or partial and says why, and never raises. Summaries are cached by the
modification times and sizes of the files they come from, so listing 200 runs re-reads only the runs that changed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core import safe_yaml
from tunelab.core.errors import ConfigError
from tunelab.train.metrics import parse_metric_lines
from tunelab.ui.jobs import JobRecord, has_record, read_record

CONFIG = "config.yaml"
RECENT_S = 60.0
"""A run whose metrics.jsonl changed this recently, and has no job record, is taken to be training."""
BEST_METRICS = ("exact_match", "accuracy", "token_f1", "rouge_l", "macro_f1", "val_token_acc")
STATUSES = ("running", "finished", "failed", "stopped", "corrupt")


@dataclass
class Metrics:
    """A metrics.jsonl file as read: its lines, and the line numbers that did not parse (a truncated write)."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)


@dataclass
class RunSummary:
    """One row of the runs list."""

    name: str
    """The run folder, relative to the runs folder (a study's trial: `study/trial-3`)."""
    status: str
    objective: str = ""
    method: str = ""
    model: str = ""
    step: int = 0
    best: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "objective": self.objective, "method": self.method,
                "model": self.model, "step": self.step, "best": self.best, "updated": self.updated,
                "age_s": max(0.0, time.time() - self.updated), "problems": self.problems}  # fmt: skip


def read_metrics(path: Path) -> Metrics:
    """Every line of a metrics.jsonl that parses as a JSON object; the others' line numbers in `bad_lines`."""
    lines, bad = parse_metric_lines(path)
    return Metrics(lines=lines, bad_lines=[number for number, _ in bad])


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_run_config(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The run's config.yaml as a mapping (bounded by core.safe_yaml), or None and why it cannot be read."""
    path = run_dir / CONFIG
    if not path.is_file():
        return None, f"no {CONFIG}"
    try:
        doc, _ = safe_yaml.load(safe_yaml.read_text(path), str(path))
    except ConfigError as exc:
        return None, f"{CONFIG} does not read: {exc}"
    if not isinstance(doc, dict):
        return None, f"{CONFIG} is not a mapping"
    return doc, None


def latest_checkpoint_state(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint's state.json (step, finished, ...), or None when there is no readable one."""
    folders = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())
    for folder in reversed(folders):
        state = read_json(folder / "state.json")
        if state is not None:
            return state
    return None


def is_run_dir(folder: Path) -> bool:
    """Whether `folder` looks like a run folder (complete or not): its config, its metrics or its checkpoints."""
    return any((folder / name).exists() for name in (CONFIG, "metrics.jsonl", "checkpoints"))


def is_study_dir(folder: Path) -> bool:
    return (folder / "trials.csv").is_file()


def _section_name(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key)
    if isinstance(value, dict):
        return str(value.get("name", default))
    return str(value) if isinstance(value, str) else default


def best_metrics(metrics: Metrics, evaluation: dict[str, Any] | None) -> dict[str, float]:
    """The lowest validation loss logged, and the final evaluation's headline rates (eval.json)."""
    best: dict[str, float] = {}
    losses = [r["val_loss"] for r in metrics.lines if isinstance(r.get("val_loss"), int | float)]
    losses = [v for v in losses if math.isfinite(v)]
    if losses:
        best["val_loss"] = min(losses)
    for name in BEST_METRICS:
        value = (evaluation or {}).get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            best[name] = float(value)
    return best


def run_status(job: JobRecord | None, finished: bool, updated: float, trained: bool) -> str:
    """running / finished / failed / stopped: the dashboard's own job record first (it saw the process end),
    then what the folder shows (a final checkpoint, recent metrics, checkpoints to resume from)."""
    if job is not None and job.alive():
        return "running"
    if job is not None and job.state in ("finished", "failed", "stopped"):
        return job.state
    if finished:
        return "finished"
    if time.time() - updated < RECENT_S:
        return "running"
    return "stopped" if trained else "failed"


def _stamp(run_dir: Path) -> tuple:
    files = [run_dir / CONFIG, run_dir / "metrics.jsonl", run_dir / "eval.json", run_dir / "checkpoints"]
    stamps = []
    for f in files:
        try:
            st = f.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class RunsIndex:
    """The runs under one folder (and one level down, a study's trials), cached by file stamps."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, tuple[tuple, RunSummary]] = {}

    def run_dirs(self) -> list[Path]:
        """Run folders directly under the root and inside study folders; dot folders are skipped."""
        found = []
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if child.name.startswith(".") or not child.is_dir():
                continue
            if is_run_dir(child) or has_record(self.root, child.name):  # started here, before its first file
                found.append(child)
            elif is_study_dir(child):
                found += [t for t in sorted(child.iterdir()) if t.is_dir() and is_run_dir(t)]
        return found

    def studies(self) -> list[str]:
        folders = sorted(self.root.iterdir()) if self.root.is_dir() else []
        return [c.name for c in folders if c.is_dir() and not c.name.startswith(".") and is_study_dir(c)]

    def summaries(self) -> list[RunSummary]:
        return [self.summary(d) for d in self.run_dirs()]

    def summary(self, run_dir: Path) -> RunSummary:
        """The run's summary; a run whose files changed since the last call (or is running) is read again."""
        name = run_dir.relative_to(self.root).as_posix()
        job = read_record(self.root, name)
        stamp = (_stamp(run_dir), None if job is None else (job.state, job.pid, job.alive()))
        cached = self._cache.get(run_dir)
        if cached is not None and cached[0] == stamp and cached[1].status != "running":
            return cached[1]
        summary = self._read(run_dir, name, job)
        self._cache[run_dir] = (stamp, summary)
        return summary

    def _read(self, run_dir: Path, name: str, job: JobRecord | None) -> RunSummary:
        config, problem = read_run_config(run_dir)
        metrics = read_metrics(run_dir / "metrics.jsonl")
        evaluation = read_json(run_dir / "eval.json")
        state = latest_checkpoint_state(run_dir)
        steps = [r["step"] for r in metrics.lines if isinstance(r.get("step"), int)]
        updated = max((f.stat().st_mtime for f in run_dir.iterdir()), default=run_dir.stat().st_mtime)
        finished = bool(state and state.get("finished")) or evaluation is not None
        trained = state is not None
        summary = RunSummary(name, run_status(job, finished, updated, trained), step=max(steps, default=0),
                             best=best_metrics(metrics, evaluation), updated=updated)  # fmt: skip
        if config is not None:
            summary.objective = _section_name(config, "objective", "sft")
            summary.method = _section_name(config, "method", "lora")
            model = config.get("model")
            summary.model = str(model.get("source", "")) if isinstance(model, dict) else ""
        # A folder the dashboard made for a run whose process ended before writing anything is just failed.
        if problem is not None and is_run_dir(run_dir) and not (job is not None and job.alive()):
            summary.problems.append(problem)
            summary.status = "corrupt"
        if metrics.bad_lines:
            lines = ", ".join(str(n) for n in metrics.bad_lines[:5])
            summary.problems.append(f"metrics.jsonl: {len(metrics.bad_lines)} line(s) do not parse (line {lines})")
        return summary
