"""Calibration of a classifier: does a 0.9 confidence mean right nine times in ten?

Expected calibration error (Guo et al. 2017): predictions binned by confidence into equal-width bins, and the
gaps between each bin's accuracy and mean confidence averaged with the bins' shares of the examples as weights.
The reliability diagram plots the same bins (accuracy against confidence, the diagonal being perfect calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

BINS = 10


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: its edges, example count, mean confidence and accuracy (NaN for an empty bin)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of share x |accuracy - confidence|."""
        full = self.counts > 0
        share = self.counts[full] / self.counts.sum()
        return float(np.sum(share * np.abs(self.accuracy[full] - self.confidence[full])))

    def to_dict(self) -> dict[str, Any]:
        return {"ece": self.ece, "edges": self.edges.tolist(), "counts": self.counts.tolist(),
                "confidence": _nullable(self.confidence), "accuracy": _nullable(self.accuracy)}  # fmt: skip


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin predictions by their confidence (the top class's probability) into `bins` equal-width bins, (lo, hi]
    as in Guo et al. (a confidence of exactly 0 joins the first bin)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return Reliability(edges, counts, mean_conf, accuracy)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """ECE of predictions with these confidences and 0/1 correctness (see `reliability`)."""
    return reliability(confidence, correct, bins).ece


def reliability_diagram(table: Reliability, path: str | Path, title: str = "Reliability") -> Path:
    """Write the reliability diagram as a PNG: each bin's accuracy as a bar at its confidence range, the gap to
    its mean confidence shaded, and the diagonal of perfect calibration. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = np.diff(table.edges)
    full = table.counts > 0
    # A bare Figure, not pyplot: no global backend is chosen or changed for whoever imported tunelab (a notebook).
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    left = table.edges[:-1][full]
    ax.bar(left, table.accuracy[full], width=width[full], align="edge", edgecolor="black", label="accuracy")
    gap = table.confidence[full] - table.accuracy[full]
    ax.bar(left, gap, bottom=table.accuracy[full], width=width[full], align="edge", color="red", alpha=0.3,
           label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{title} (ECE {100 * table.ece:.1f}%)")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
