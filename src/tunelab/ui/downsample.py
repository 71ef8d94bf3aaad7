"""Curves thinned for drawing: a browser plots 2,000 points as well as 100,000, and sends and draws them 50x faster.

Min/max per bucket keeps what a reader looks for in a loss curve (spikes and the envelope), which averaging or
taking every k-th point would hide: the points are cut into `max_points / 2` runs of equal length and each
keeps its lowest and highest point, in x order, with the first and last point of the curve.
"""

from __future__ import annotations

import itertools

import numpy as np

MAX_POINTS = 2000


def downsample(xs: list[float], ys: list[float | None], max_points: int = MAX_POINTS) -> tuple[list[float], list]:
    """At most `max_points` points of the curve (xs ascending, None or non-finite values dropped)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in ys], dtype=float)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) <= max_points:
        return x.tolist(), y.tolist()
    buckets = max(1, (max_points - 2) // 2)
    edges = np.linspace(0, len(x), buckets + 1).astype(int)
    chosen = [0, len(x) - 1]
    for start, end in itertools.pairwise(edges.tolist()):
        if end > start:
            chunk = y[start:end]
            chosen += [start + int(np.argmin(chunk)), start + int(np.argmax(chunk))]
    index = np.unique(np.asarray(chosen))
    return x[index].tolist(), y[index].tolist()
