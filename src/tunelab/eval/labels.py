"""Label metrics: per-class precision, recall and F1, their macro means, and the confusion matrix.

Used for a classifier's predictions and for generated answers that are labels (a handful of distinct references
that repeat, e.g. "positive"/"negative"). A generated answer outside the label set is counted in an extra
"(other)" column, so a model that answers "pos." is seen to miss rather than silently dropped.

Counted with numpy from one `bincount` (scikit-learn gives the same numbers, a test checks it): the bootstrap
intervals recompute macro-F1 two thousand times, and this keeps each under a tenth of a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OTHER = "(other)"
"""The confusion matrix's column for predictions outside the label set."""
MAX_LABELS = 20
"""A generation task is read as labels when it has at most this many distinct references (each repeated)."""


def confusion(gold: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes + 1) counts: row = gold label id, column = predicted id (the last column: other)."""
    pred = np.where((pred >= 0) & (pred < classes), pred, classes)
    return np.bincount(gold * (classes + 1) + pred, minlength=classes * (classes + 1)).reshape(classes, classes + 1)


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of each class (0 where undefined, as scikit-learn's zero_division=0)."""
    hits = np.diag(matrix[:, :-1]).astype(np.float64)
    predicted, actual = matrix[:, :-1].sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return precision, recall, f1


def _present(matrix: np.ndarray) -> np.ndarray:
    """The classes that occur as gold labels or are predicted: those a macro mean averages over."""
    return (matrix.sum(axis=1) > 0) | (matrix[:, :-1].sum(axis=0) > 0)


MACRO = ("macro_precision", "macro_recall", "macro_f1")


def _macro(matrix: np.ndarray) -> dict[str, float]:
    present = _present(matrix)
    means = (float(v[present].mean()) if present.any() else 0.0 for v in _per_class(matrix))
    return dict(zip(MACRO, means, strict=True))


def macro_scores(gold: np.ndarray, pred: np.ndarray, classes: int) -> dict[str, float]:
    """Macro precision, recall and F1 over the classes that occur in `gold` or are predicted (scikit-learn's
    average="macro" with labels=None, zero_division=0)."""
    return _macro(confusion(gold, pred, classes))


@dataclass(frozen=True)
class LabelReport:
    """Per-class and macro precision/recall/F1 and the confusion matrix of one set of predictions."""

    labels: list[str]
    matrix: np.ndarray
    """Rows: gold labels in `labels` order; columns: the same, then `(other)`."""

    @property
    def metrics(self) -> dict[str, float]:
        """macro_precision, macro_recall and macro_f1 over the classes present (gold or predicted)."""
        return _macro(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: labels, the confusion matrix (`columns` adds `(other)`), per-class scores and support."""
        precision, recall, f1 = _per_class(self.matrix)
        per_class = {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(self.labels, precision, recall, f1, self.matrix.sum(axis=1), strict=True)
        }
        return {"labels": self.labels, "columns": [*self.labels, OTHER], "confusion": self.matrix.tolist(),
                "per_class": per_class, **self.metrics}  # fmt: skip


def label_ids(gold: Sequence[Any], pred: Sequence[Any], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Gold and predicted labels as ids into `labels` (a prediction outside it: -1)."""
    index = {name: k for k, name in enumerate(labels)}
    return np.array([index[str(g)] for g in gold]), np.array([index.get(str(p), -1) for p in pred])


def label_report(gold: Sequence[Any], pred: Sequence[Any], labels: list[str] | None = None) -> LabelReport:
    """The report of predicted against gold labels; `labels` default to the gold labels, sorted."""
    names = labels or sorted({str(g) for g in gold})
    gold_ids, pred_ids = label_ids(gold, pred, names)
    return LabelReport(names, confusion(gold_ids, pred_ids, len(names)))


def is_label_task(references: Sequence[str]) -> bool:
    """Whether generated answers are labels: at most `MAX_LABELS` distinct references, each used twice on average."""
    distinct = len(set(references))
    return 1 < distinct <= MAX_LABELS and 2 * distinct <= len(references)
