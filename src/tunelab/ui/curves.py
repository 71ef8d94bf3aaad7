"""Training curves as the browser draws them (uPlot's aligned columns: one x array, one value array per series,
None where a series has no point), downsampled so that a chart holds at most `MAX_POINTS` x values whatever the
run's length: each of a chart's k series keeps at most MAX_POINTS / k points (`downsample`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tunelab.ui.downsample import MAX_POINTS, downsample
from tunelab.ui.runs_index import read_metrics

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


Columns = dict[str, tuple[list[float], list[float | None]]]


def columns(lines: list[dict[str, Any]]) -> Columns:
    """Every numeric metric's (steps, values) over the lines that log it with a step, in one pass."""
    out: Columns = {}
    for row in lines:
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "epoch"):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value) if math.isfinite(value) else None)
    return out


def aligned(title: str, named: Columns, max_points: int) -> dict:
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


def run_charts(cols: Columns, max_points: int = MAX_POINTS) -> list[dict]:
    """The run page's charts: loss with validation loss, lr, tokens/s, memory, gradient norm, and the other
    validation metrics; charts without any point are left out."""
    charts = [aligned(title, {k: cols[k] for k in keys if k in cols}, max_points) for title, keys in RUN_CHARTS]
    extra = sorted(k for k in cols if k.startswith("val_") and k not in SKIPPED_VALIDATION)
    if extra:
        charts.append(aligned("validation metrics", {k: cols[k] for k in extra}, max_points))
    return [c for c in charts if c["x"]]


def compare_charts(cols: dict[str, Columns], max_points: int = MAX_POINTS) -> list[dict]:
    """One chart per metric with one series per run."""
    charts = [aligned(metric, {name: c[metric] for name, c in cols.items() if metric in c}, max_points)
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


class CurveCache:
    """Each metrics file's parsed columns, kept while the file's size and modification time stay the same: a
    page polling a finished 100k-step run every 2 s parses it once."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._cols: OrderedDict[Path, tuple[tuple[int, int], Columns]] = OrderedDict()

    def columns(self, path: Path) -> Columns:
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            return {}
        found = self._cols.get(path)
        if found is None or found[0] != stamp:
            found = (stamp, columns(read_metrics(path).lines))
            self._cols[path] = found
            while len(self._cols) > self.size:
                self._cols.popitem(last=False)
        self._cols.move_to_end(path)
        return found[1]
