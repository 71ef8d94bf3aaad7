"""Confidence intervals for every metric of an evaluation, and the paired test of two models on the same rows.

The per-example scores are the prediction rows' own fields (exact_match, token_f1, accuracy, ...): a metric that
is the mean of a field gets a bootstrap interval of that mean, and two models' fields are compared with McNemar's
test when they are 0/1 and a paired bootstrap otherwise (`tunelab.eval.stats.compare`). Corpus-level metrics
(BLEU, chrF, macro-F1, calibration error) are not means: they are recomputed on resampled rows
(`CORPUS_METRICS`), and compared with a paired bootstrap of the same recomputation. Validation loss, perplexity and
token (or pair) accuracy are ratios over the validation rows: given each row's sums (`validation_rows.jsonl`:
loss, count, correct), they are recomputed on resampled rows the same way (a ratio bootstrap: sum of losses over sum
of counts), once the full rows are checked to give the reported value. A metric with no per-example source keeps its
value and gets no interval.

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
from tunelab.train.validation import VALIDATION_ROW_KEYS

Rows = list[dict[str, Any]]
Statistic = Callable[[np.ndarray], float]

ALIASES = {"val_acc": "accuracy", "val_macro_f1": "macro_f1", "val_mse": "squared_error", "val_mae": "abs_error"}
"""A classifier's validation metric -> the prediction rows' field (or corpus metric) it is computed from."""


def _text_statistic(stats_of: Callable[[str, str], list[int]], score: Callable[[np.ndarray], float]):
    def build(rows: Rows) -> Statistic | None:
        if not all("prediction" in r and "reference" in r for r in rows):
            return None
        stats = np.array([stats_of(str(r["prediction"]), str(r["reference"])) for r in rows], dtype=np.float64).T
        # Summed over a resample as (times each row was drawn) @ (row statistics): 10x faster than gathering rows.
        return lambda idx: score(stats @ np.bincount(idx, minlength=len(rows)))

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


@dataclass(frozen=True)
class Evidence:
    """A metric's per-example evidence in one set of rows: the field (or corpus metric) it comes from, and either
    the per-example scores or the statistic that recomputes it on row indices, over `n` rows."""

    source: str
    scores: np.ndarray | None = None
    statistic: Statistic | None = None
    n: int = 0


VALIDATION_RATIOS: dict[str, Callable[[np.ndarray], float]] = {
    "loss": lambda s: float(s[0] / max(s[1], 1.0)),
    "ppl": lambda s: float(np.exp(min(s[0] / max(s[1], 1.0), 50.0))),
    "accuracy": lambda s: float(s[2] / max(s[1], 1.0)),
}
"""A validation metric as a function of the summed (loss, count, correct) of the rows drawn."""
RATIO_TOLERANCE = 1e-6


def validation_evidence(metric: str, value: float, rows: Rows) -> Evidence | None:
    """The ratio evidence of a validation metric (val_loss, val_ppl, val_token_acc, ...) from per-row sums, when
    the sums over every row give `value` back (so a metric that is not such a ratio never gets one)."""
    if not metric.startswith("val_") or "/" in metric or not rows:
        return None
    if not all(is_score(r.get(k)) and np.isfinite(float(r[k])) for r in rows for k in VALIDATION_ROW_KEYS):
        return None
    sums = np.array([[float(r[k]) for k in VALIDATION_ROW_KEYS] for r in rows], dtype=np.float64).T
    kind = {"val_loss": "loss", "val_ppl": "ppl"}.get(metric, "accuracy")
    ratio = VALIDATION_RATIOS[kind]
    if not np.isclose(ratio(sums.sum(axis=1)), value, rtol=RATIO_TOLERANCE, atol=RATIO_TOLERANCE):
        return None
    return Evidence(f"validation {kind}", statistic=lambda idx: ratio(sums @ np.bincount(idx, minlength=len(rows))),
                    n=len(rows))  # fmt: skip


def evidence(metric: str, rows: Rows) -> Evidence | None:
    """Where a metric's per-example evidence is: its own field (or its alias's) when every row has it as a
    number, its corpus metric when the rows can recompute it, else None (built once: corpus statistics read every
    row's text)."""
    for name in (metric, ALIASES.get(metric)):
        if name is None or not rows:
            continue
        if all(is_score(r.get(name)) for r in rows):
            return Evidence(name, scores=np.array([float(r[name]) for r in rows], dtype=np.float64), n=len(rows))
        if name in CORPUS_METRICS and (statistic := CORPUS_METRICS[name](rows)) is not None:
            return Evidence(name, statistic=statistic, n=len(rows))
    return None


def source_of(metric: str, rows: Rows) -> str | None:
    """The name of the field or corpus metric a metric's interval is computed from (see `evidence`)."""
    found = evidence(metric, rows)
    return found.source if found is not None else None


def interval_of(
    found: Evidence, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """The bootstrap interval of a mean of scores, or of a corpus statistic over its resampled rows."""
    if found.scores is not None:
        return bootstrap_ci(found.scores, confidence=confidence, resamples=resamples, seed=seed)
    assert found.statistic is not None  # one of the two is always set
    return bootstrap_statistic(found.n, found.statistic, confidence=confidence, resamples=resamples, seed=seed)


def metric_interval(
    metric: str, rows: Rows, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval | None:
    """The bootstrap interval of one metric from the prediction rows, or None when they hold no evidence of it."""
    found = evidence(metric, rows)
    return None if found is None else interval_of(found, confidence=confidence, resamples=resamples, seed=seed)


def test_of(
    a: Evidence, b: Evidence, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> PairedTest | None:
    """The paired test of b against a (McNemar for 0/1 scores, else a paired bootstrap, recomputing corpus
    statistics on the same resampled rows); None when the two sides' evidence is not of the same kind or size."""
    if a.source != b.source or a.n != b.n:
        return None
    if a.scores is not None and b.scores is not None:
        return paired_compare(a.scores, b.scores, confidence=confidence, resamples=resamples, seed=seed)
    stat_a, stat_b = a.statistic, b.statistic
    if stat_a is None or stat_b is None:
        return None
    index = np.arange(a.n)
    return paired_bootstrap(index, index, confidence=confidence, resamples=resamples, seed=seed,
                            statistic=lambda i, _: stat_b(i.astype(np.int64)) - stat_a(i.astype(np.int64)))  # fmt: skip


def paired_test(
    metric: str, rows_a: Rows, rows_b: Rows, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedTest | None:  # fmt: skip
    """The paired test of b against a on one metric, or None when either side lacks per-example evidence."""
    a, b = evidence(metric, rows_a), evidence(metric, rows_b)
    if a is None or b is None:
        return None
    return test_of(a, b, confidence=confidence, resamples=resamples, seed=seed)


def same_rows(rows_a: Rows, rows_b: Rows) -> bool:
    """Whether two prediction lists score the same examples in the same order (origin, prompt and gold answer)."""
    keys = ("origin", "prompt", "text", "reference", "label")
    return len(rows_a) == len(rows_b) > 0 and all(
        all(a.get(k) == b.get(k) for k in keys) for a, b in zip(rows_a, rows_b, strict=True)
    )


def same_validation_rows(rows_a: Rows, rows_b: Rows) -> bool:
    """Whether two validation-row lists are of the same rows (the same count of targets, row by row)."""
    return len(rows_a) == len(rows_b) > 0 and all(
        a.get("count") == b.get("count") for a, b in zip(rows_a, rows_b, strict=True)
    )


def summarize(
    columns: dict[str, tuple[dict[str, float], Rows]], *, confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES, seed: int = 0, validation: dict[str, Rows] | None = None,
) -> Comparison:  # fmt: skip
    """Intervals for each column's metrics from its rows and, for two columns scored on the same rows, the paired
    test of the second against the first on every metric both can test. `validation`: each column's validation
    rows (per-row sums, `validation_evidence`), for the validation metrics the prediction rows cannot give."""
    kw = {"confidence": confidence, "resamples": resamples, "seed": seed}
    values = {name: dict(metrics) for name, (metrics, _) in columns.items()}
    val_rows = validation or {}

    def evidence_of(name: str, metric: str, value: float, rows: Rows) -> Evidence | None:
        return evidence(metric, rows) or validation_evidence(metric, value, val_rows.get(name, []))

    found = {name: {m: e for m, v in metrics.items() if (e := evidence_of(name, m, v, rows)) is not None}
             for name, (metrics, rows) in columns.items()}  # fmt: skip
    intervals = {name: {m: interval_of(e, **kw) for m, e in found[name].items()} for name in columns}
    names = list(columns)
    paired = len(names) == 2 and same_rows(columns[names[0]][1], columns[names[1]][1])
    paired_val = len(names) == 2 and same_validation_rows(val_rows.get(names[0], []), val_rows.get(names[1], []))
    tests: dict[str, PairedTest] = {}
    if paired or paired_val:
        first, second = found[names[0]], found[names[1]]
        for metric in [m for m in first if m in second]:
            from_validation = first[metric].source.startswith("validation ")
            if (paired_val if from_validation else paired) and (test := test_of(first[metric], second[metric], **kw)):
                tests[metric] = test
    examples = max((len(rows) for _, rows in columns.values()), default=0)
    return Comparison(names, values, intervals, tests, examples, confidence, paired)
