"""Training curves as the browser draws them (uPlot's aligned columns: one x array, one value array per series,
None where a series has no point), downsampled so that a chart holds at most `MAX_POINTS` x values whatever the
run's length: each of a chart's k series keeps at most MAX_POINTS / k points (`downsample`)."""

from __future__ import annotations

import math
from typing import Any

from tunelab.ui.downsample import MAX_POINTS, downsample

RUN_CHARTS = (
    ("loss", ("loss", "val_loss")),
    ("learning rate", ("lr",)),
    ("tokens/s", ("tokens_per_s",)),
    ("peak memory (MB)", ("peak_mem_mb",)),
    ("gradient norm", ("grad_norm",)),
)
COMPARE_METRICS = ("loss", "val_loss", "lr", "tokens_per_s", "peak_mem_mb")
SKIPPED_VALIDATION = ("val_loss", "val_ppl")
"""Validation metrics drawn elsewhere (val_loss beside the loss) or not at all (perplexity: exp of val_loss)."""


def series(lines: list[dict[str, Any]], key: str) -> tuple[list[float], list[float | None]]:
    """(steps, values) of one metric over the lines that log it with a step."""
    xs, ys = [], []
    for row in lines:
        step, value = row.get("step"), row.get(key)
        if isinstance(step, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
            xs.append(float(step))
            ys.append(float(value) if math.isfinite(value) else None)
    return xs, ys


def aligned(title: str, named: dict[str, tuple[list[float], list[float | None]]], max_points: int) -> dict:
    """One chart: its series downsampled (MAX/k each) and aligned on the union of their x values."""
    named = {k: v for k, v in named.items() if v[0]}
    budget = max(4, max_points // max(1, len(named)))
    thinned = {k: downsample(xs, ys, budget) for k, (xs, ys) in named.items()}
    x = sorted({v for xs, _ in thinned.values() for v in xs})
    where = {v: i for i, v in enumerate(x)}
    out = []
    for label, (xs, ys) in thinned.items():
        values: list[float | None] = [None] * len(x)
        for xv, yv in zip(xs, ys, strict=True):
            values[where[xv]] = yv
        out.append({"label": label, "values": values})
    return {"title": title, "x": x, "series": out}


def run_charts(lines: list[dict[str, Any]], max_points: int = MAX_POINTS) -> list[dict]:
    """The run page's charts: loss with validation loss, lr, tokens/s, memory, gradient norm, and the other
    validation metrics; charts without any point are left out."""
    charts = [aligned(title, {k: series(lines, k) for k in keys}, max_points) for title, keys in RUN_CHARTS]
    extra = sorted({k for row in lines for k in row if k.startswith("val_") and k not in SKIPPED_VALIDATION})
    if extra:
        charts.append(aligned("validation metrics", {k: series(lines, k) for k in extra}, max_points))
    return [c for c in charts if c["x"]]


def compare_charts(runs: dict[str, list[dict[str, Any]]], max_points: int = MAX_POINTS) -> list[dict]:
    """One chart per metric with one series per run."""
    charts = [aligned(metric, {name: series(lines, metric) for name, lines in runs.items()}, max_points)
              for metric in COMPARE_METRICS]  # fmt: skip
    return [c for c in charts if c["x"]]


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists stay values)."""
    if not isinstance(doc, dict):
        return {prefix: doc}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_diff(configs: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The dotted keys whose values differ between the runs' configs, with each run's value."""
    flat = {name: flatten(doc or {}) for name, doc in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flat.values()]
        if any(v != values[0] for v in values[1:]):
            rows.append({"key": key, "values": ["—" if v is missing else v for v in values]})
    return rows
