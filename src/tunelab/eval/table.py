"""The metrics table every evaluation prints: one row per metric, one column per model, with confidence intervals
and, for two models, the difference, its interval and the paired test's p-value. A difference the test does not
support is dimmed and marked "n.s." instead of being coloured as a win or a loss."""

from __future__ import annotations

import math

from rich.table import Table

from tunelab.eval.compare import Comparison
from tunelab.eval.stats import Interval, PairedTest

# Metrics in [0, 1] shown as percentages; everything else (losses, perplexity, counts) as plain numbers.
RATE_METRICS = frozenset({"exact_match", "token_f1", "rouge_1", "rouge_2", "rouge_l", "bleu", "chrf", "accuracy",
                          "f1", "precision", "recall", "macro_f1", "macro_precision", "macro_recall", "ece",
                          "json_valid", "json_match", "json_schema"})  # fmt: skip
RATE_SUFFIXES = ("_acc", "_accuracy", "_f1", "_exact_match")
LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "ece", "mse", "mae")


def is_rate(name: str) -> bool:
    """Whether a metric is a rate in [0, 1] (shown as a percentage, compared in percentage points); a per-task
    metric `task/metric` by its metric, and lm-evaluation-harness's `acc` and `acc_norm` too."""
    metric = name.rsplit("/", 1)[-1]
    return metric in RATE_METRICS or metric in ("acc", "acc_norm") or metric.endswith(RATE_SUFFIXES)


def metrics_table(
    columns: dict[str, dict[str, float]],
    title: str | None = None,
    intervals: dict[str, dict[str, Interval]] | None = None,
    tests: dict[str, PairedTest] | None = None,
) -> Table:
    """A table with one row per metric and one column per model, plus a "Δ" column (last minus first) for two.

    Rates are shown as percentages and their Δ in percentage points; other numbers with 4 significant digits.
    A value with an interval shows it in brackets. With `tests`, the Δ carries the paired interval and a "p"
    column the test's p-value; a Δ is green when it is a significant improvement (higher rates, lower
    losses/perplexity), red when significantly worse, and dim with "n.s." when the test does not support it.
    Without a test a Δ is coloured by its sign alone. A metric a model lacks shows as "—".
    """
    names = list(columns)
    intervals, tests = intervals or {}, tests or {}
    metrics: list[str] = []
    for values in columns.values():
        metrics.extend(k for k in values if k not in metrics)
    table = Table(title=title)
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    with_delta = len(names) == 2
    if with_delta:
        table.add_column("Δ", justify="right")
        if tests:
            table.add_column("p", justify="right")
    if tests:
        table.caption = _caption(tests, intervals)
    for metric in metrics:
        cells = [_format_value(metric, columns[n].get(metric), intervals.get(n, {}).get(metric)) for n in names]
        if with_delta:
            test = tests.get(metric)
            cells.append(_format_delta(metric, columns[names[0]].get(metric), columns[names[1]].get(metric), test))
            if tests:
                cells.append(_format_p(test))
        table.add_row(metric, *cells)
    return table


def comparison_table(comparison: Comparison, title: str | None = None) -> Table:
    """`metrics_table` of a `Comparison`: its values, intervals and tests."""
    return metrics_table(comparison.values, title, comparison.intervals, comparison.tests)


def _number(metric: str, value: float) -> str:
    return f"{100 * value:.1f}" if is_rate(metric) else f"{value:.4g}"


def _format_value(metric: str, value: float | None, interval: Interval | None = None) -> str:
    if value is None:
        return "—"
    text = f"{_number(metric, value)}%" if is_rate(metric) else _number(metric, value)
    if interval is None or not math.isfinite(value):
        return text
    return f"{text} [{_number(metric, interval.low)}, {_number(metric, interval.high)}]"


def _format_delta(metric: str, before: float | None, after: float | None, test: PairedTest | None = None) -> str:
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return ""
    delta = after - before
    text = f"{100 * delta:+.1f} pp" if is_rate(metric) else f"{delta:+.3g}"
    if test is not None:
        low, high = test.delta.low, test.delta.high
        span = f"{100 * low:+.1f}, {100 * high:+.1f}" if is_rate(metric) else f"{low:+.3g}, {high:+.3g}"
        text = f"{text} [{span}]"
        if not test.significant:
            return f"[dim]{text} n.s.[/]"
    higher_better = is_rate(metric) and not any(w in metric for w in LOWER_IS_BETTER)
    better = delta > 0 if higher_better else delta < 0 if any(w in metric for w in LOWER_IS_BETTER) else None
    if better is None or delta == 0:
        return text
    return f"[green]{text}[/]" if better else f"[red]{text}[/]"


def _caption(tests: dict[str, PairedTest], intervals: dict[str, dict[str, Interval]]) -> str:
    """What the brackets, Δ and p mean, with the tests that were used."""
    first = next(iter(tests.values()))
    shown = [i for column in intervals.values() for i in column.values()]
    confidence = shown[0].confidence if shown else first.delta.confidence
    used = ", ".join(sorted({t.test for t in tests.values()}))
    return (
        f"in brackets: {confidence:.0%} intervals; Δ: second column minus first, on the same rows; p: {used}; "
        f"n.s.: p ≥ {first.alpha:g}"
    )


def _format_p(test: PairedTest | None) -> str:
    if test is None:
        return ""
    p = test.p_value
    return "<0.001" if p < 0.001 else f"{p:.3f}"
