"""Confidence intervals for every metric of an evaluation, and the paired test of two models on the same rows.

The per-example scores are the prediction rows' own fields (exact_match, token_f1, accuracy, ...): a metric that
is the mean of a field gets a bootstrap interval of that mean, and two models' fields are compared with McNemar's
test when they are 0/1 and a paired bootstrap otherwise (`tunelab.eval.stats.compare`). Corpus-level metrics
(BLEU, chrF, macro-F1, calibration error) are not means: they are recomputed on resampled rows
(`CORPUS_METRICS`), and compared with a paired bootstrap of the same recomputation. Metrics with no per-example
source (validation loss, perplexity) keep their value and get no interval.

`Comparison.to_dict()` is the plain form written to eval_stats.json and comparison.json:

    {"columns": [name, ...], "examples": n, "confidence": 0.95, "paired": bool,
     "values":    {column: {metric: value}},
     "intervals": {column: {metric: {"estimate", "low", "high", "confidence"}}},
     "tests":     {metric: {"test", "delta": {...}, "p_value", "alpha", "significant", "discordant"}}}

`tests` compare the second column with the first (delta = second - first); it is empty for one column or when the
two columns were not scored on the same rows (`paired` false).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.eval.calibration import expected_calibration_error
from tunelab.eval.labels import MACRO, label_ids, macro_scores
from tunelab.eval.metrics import bleu_from_stats, bleu_stats, chrf_from_stats, chrf_stats, is_score
from tunelab.eval.stats import (
    DEFAULT_RESAMPLES,
    Interval,
    PairedTest,
    bootstrap_ci,
    bootstrap_statistic,
    paired_bootstrap,
)
from tunelab.eval.stats import compare as paired_compare

Rows = list[dict[str, Any]]
Statistic = Callable[[np.ndarray], float]

ALIASES = {"val_acc": "accuracy", "val_macro_f1": "macro_f1", "val_mse": "squared_error", "val_mae": "abs_error"}
"""A classifier's validation metric -> the prediction rows' field (or corpus metric) it is computed from."""


def _text_statistic(stats_of: Callable[[str, str], list[int]], score: Callable[[np.ndarray], float]):
    def build(rows: Rows) -> Statistic | None:
        if not all("prediction" in r and "reference" in r for r in rows):
            return None
        stats = np.array([stats_of(str(r["prediction"]), str(r["reference"])) for r in rows], dtype=np.float64)
        return lambda idx: score(stats[idx].sum(axis=0))

    return build


def _gold(row: dict[str, Any]) -> str:
    return str(row["label"] if "label" in row else row["reference"]).strip()


def _label_statistic(metric: str) -> Callable[[Rows], Statistic | None]:
    def build(rows: Rows) -> Statistic | None:
        if not all(("label" in r or "reference" in r) and isinstance(r.get("prediction"), str | int) for r in rows):
            return None
        answers = [str(r["prediction"]).strip() for r in rows]
        # A classifier (rows with `label`) predicts only real classes, each counting; a generated answer outside
        # the references' labels is a miss, not a class of its own.
        labels = sorted({_gold(r) for r in rows} | (set(answers) if "label" in rows[0] else set()))
        gold, pred = label_ids([_gold(r) for r in rows], answers, labels)
        return lambda idx: macro_scores(gold[idx], pred[idx], len(labels))[metric]

    return build


def _ece(rows: Rows) -> Statistic | None:
    if not all(is_score(r.get("confidence")) and is_score(r.get("accuracy")) for r in rows):
        return None
    confidence = np.array([r["confidence"] for r in rows], dtype=np.float64)
    correct = np.array([r["accuracy"] for r in rows], dtype=np.float64)
    return lambda idx: expected_calibration_error(confidence[idx], correct[idx])


CORPUS_METRICS: dict[str, Callable[[Rows], Statistic | None]] = {
    "bleu": _text_statistic(bleu_stats, bleu_from_stats),
    "chrf": _text_statistic(chrf_stats, chrf_from_stats),
    **{metric: _label_statistic(metric) for metric in MACRO},
    "ece": _ece,
}
"""Corpus-level metric -> a builder of its statistic on resampled row indices (None: the rows cannot give it)."""


@dataclass(frozen=True)
class Comparison:
    """Each column's metric values and intervals, and the paired test of the second column against the first."""

    columns: list[str]
    values: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, Interval]]
    tests: dict[str, PairedTest] = field(default_factory=dict)
    examples: int = 0
    confidence: float = 0.95
    paired: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The plain JSON form described in the module docstring."""
        return {
            "columns": self.columns,
            "examples": self.examples,
            "confidence": self.confidence,
            "paired": self.paired,
            "values": self.values,
            "intervals": {c: {m: i.to_dict() for m, i in v.items()} for c, v in self.intervals.items()},
            "tests": {m: t.to_dict() for m, t in self.tests.items()},
        }


def source_of(metric: str, rows: Rows) -> str | None:
    """Where a metric's per-example evidence is: its own field (or its alias's) when every row has it as a
    number, its corpus metric's name when the rows can recompute it, else None."""
    for name in (metric, ALIASES.get(metric)):
        if name is None or not rows:
            continue
        if all(is_score(r.get(name)) for r in rows):
            return name
        if name in CORPUS_METRICS and CORPUS_METRICS[name](rows) is not None:
            return name
    return None


def _scores(rows: Rows, name: str) -> np.ndarray:
    return np.array([float(r[name]) for r in rows], dtype=np.float64)


def metric_interval(
    metric: str, rows: Rows, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval | None:
    """The bootstrap interval of one metric from the prediction rows, or None when they hold no evidence of it."""
    name = source_of(metric, rows)
    if name is None:
        return None
    if all(is_score(r.get(name)) for r in rows):
        return bootstrap_ci(_scores(rows, name), confidence=confidence, resamples=resamples, seed=seed)
    statistic = CORPUS_METRICS[name](rows)
    assert statistic is not None  # source_of checked it
    return bootstrap_statistic(len(rows), statistic, confidence=confidence, resamples=resamples, seed=seed)


def paired_test(
    metric: str, rows_a: Rows, rows_b: Rows, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedTest | None:  # fmt: skip
    """The paired test of b against a on one metric (McNemar for 0/1 scores, else a paired bootstrap, recomputing
    corpus metrics on the same resampled rows), or None when either side lacks per-example evidence."""
    name = source_of(metric, rows_a)
    if name is None or source_of(metric, rows_b) != name:
        return None
    if all(is_score(r.get(name)) for r in (*rows_a, *rows_b)):
        return paired_compare(_scores(rows_a, name), _scores(rows_b, name), confidence=confidence,
                              resamples=resamples, seed=seed)  # fmt: skip
    stat_a, stat_b = CORPUS_METRICS[name](rows_a), CORPUS_METRICS[name](rows_b)
    assert stat_a is not None and stat_b is not None  # source_of checked both
    index = np.arange(len(rows_a))
    return paired_bootstrap(index, index, confidence=confidence, resamples=resamples, seed=seed,
                            statistic=lambda i, _: stat_b(i.astype(np.int64)) - stat_a(i.astype(np.int64)))  # fmt: skip


def same_rows(rows_a: Rows, rows_b: Rows) -> bool:
    """Whether two prediction lists score the same examples in the same order (origin, prompt and gold answer)."""
    keys = ("origin", "prompt", "text", "reference", "label")
    return len(rows_a) == len(rows_b) > 0 and all(
        all(a.get(k) == b.get(k) for k in keys) for a, b in zip(rows_a, rows_b, strict=True)
    )


def summarize(
    columns: dict[str, tuple[dict[str, float], Rows]], *, confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
) -> Comparison:  # fmt: skip
    """Intervals for each column's metrics from its rows and, for two columns scored on the same rows, the paired
    test of the second against the first on every metric both can test."""
    kw = {"confidence": confidence, "resamples": resamples, "seed": seed}
    values = {name: dict(metrics) for name, (metrics, _) in columns.items()}
    intervals: dict[str, dict[str, Interval]] = {}
    for name, (metrics, rows) in columns.items():
        found = {m: metric_interval(m, rows, **kw) for m in metrics}
        intervals[name] = {m: i for m, i in found.items() if i is not None}
    names = list(columns)
    paired = len(names) == 2 and same_rows(columns[names[0]][1], columns[names[1]][1])
    tests: dict[str, PairedTest] = {}
    if paired:
        (metrics_a, rows_a), (metrics_b, rows_b) = columns[names[0]], columns[names[1]]
        for metric in [m for m in metrics_a if m in metrics_b]:
            test = paired_test(metric, rows_a, rows_b, **kw)
            if test is not None:
                tests[metric] = test
    examples = max((len(rows) for _, rows in columns.values()), default=0)
    return Comparison(names, values, intervals, tests, examples, confidence, paired)
