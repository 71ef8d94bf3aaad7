"""The report's content as plain cells, shared by report.html and report.md (`tunelab.eval.report`): the metrics
table with intervals and paired tests, per-example differences between two columns, the robustness and bias
tables, and the metrics chart as PNG bytes."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tunelab.eval.stats import shown_verdict
from tunelab.eval.table import is_rate

Rows = list[dict[str, Any]]
SCORE_FIELDS = ("exact_match", "accuracy", "correct", "token_f1", "rouge_l")
"""The per-example field that says whether a row improved, first one present wins."""


def read_rows(path: Path) -> Rows:
    """A predictions JSONL file's rows (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def metrics_chart(stats: dict[str, Any]) -> bytes | None:
    """A bar chart of the rate metrics of every column with their interval as error bars (PNG), or None."""
    columns = stats.get("columns", [])
    metrics = [m for m in _metrics(stats) if is_rate(m) and any(m in stats["intervals"].get(c, {}) for c in columns)]
    if not metrics:
        return None
    fig = Figure(figsize=(min(9.0, max(4.0, 0.9 * len(metrics) * max(1, len(columns)))), 3.2), dpi=100)
    ax = fig.subplots()
    width = 0.8 / max(1, len(columns))
    for k, column in enumerate(columns):
        found = [stats["intervals"].get(column, {}).get(m) for m in metrics]
        xs = [i + k * width for i in range(len(metrics))]
        heights = [100 * f["estimate"] if f else 0.0 for f in found]
        errors = [[100 * (f["estimate"] - f["low"]) if f else 0 for f in found],
                  [100 * (f["high"] - f["estimate"]) if f else 0 for f in found]]  # fmt: skip
        ax.bar(xs, heights, width, yerr=errors, capsize=3, label=column)
    ax.set_xticks([i + width * (len(columns) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _metrics(stats: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for values in stats.get("values", {}).values():
        found.extend(m for m in values if m not in found and isinstance(values[m], int | float))
    return found


def _number(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.1f}%" if is_rate(metric) else f"{value:.4g}"


def _interval(metric: str, found: dict[str, Any] | None) -> str:
    if not found:
        return ""
    scale, unit = (100, "") if is_rate(metric) else (1, "")
    return f"[{scale * found['low']:.3g}, {scale * found['high']:.3g}]{unit}"


def metric_rows(stats: dict[str, Any]) -> tuple[list[str], list[list[str]], list[bool | None]]:
    """The metrics table as text cells: header, one row per metric (value [interval] per column, then the paired
    difference, its interval and p-value) and, per row, whether the difference is significant (None: no test)."""
    columns = stats.get("columns", [])
    tests = stats.get("tests", {})
    header = ["metric", *columns] + (["Δ (second − first)", "test", "p"] if tests else [])
    rows, significant = [], []
    for metric in _metrics(stats):
        cells = [metric]
        for column in columns:
            value = stats["values"].get(column, {}).get(metric)
            shown = _number(metric, value) if isinstance(value, int | float) else "—"
            cells.append(f"{shown} {_interval(metric, stats['intervals'].get(column, {}).get(metric))}".strip())
        test = tests.get(metric)
        if tests:
            cells += _test_cells(metric, test)
        rows.append(cells)
        significant.append(None if test is None else bool(test["significant"]))
    return header, rows, significant


def _test_cells(metric: str, test: dict[str, Any] | None) -> list[str]:
    if test is None:
        return ["", "", ""]
    delta, scale = test["delta"], 100 if is_rate(metric) else 1
    unit = " pp" if is_rate(metric) else ""
    mark = "" if test["significant"] else " (n.s.)"
    text = f"{scale * delta['estimate']:+.3g}{unit} [{scale * delta['low']:+.3g}, {scale * delta['high']:+.3g}]{mark}"
    return [text, str(test["test"]), f"{test['p_value']:.3g}"]


def _score(row: dict[str, Any]) -> float | None:
    for name in SCORE_FIELDS:
        if isinstance(row.get(name), int | float):
            return float(row[name])
    if "label" in row and "prediction" in row:
        return float(str(row["label"]) == str(row["prediction"]))
    return None


def example_diffs(columns: dict[str, Rows]) -> list[dict[str, Any]]:
    """Row by row across the columns (the first is the base when there are two): the prompt, the reference, each
    column's answer and score, and a status: improved, regressed, changed (same score, other answer) or same."""
    names = list(columns)
    out = []
    for k, rows in enumerate(zip(*columns.values(), strict=False)):
        first = rows[0]
        answers = [str(r.get("prediction", "")) for r in rows]
        scores = [_score(r) for r in rows]
        status = "same"
        if len(rows) == 2 and None not in scores:
            a, b = scores[0], scores[1]
            status = _status(a, b, answers[0] != answers[1])  # type: ignore[arg-type]
        prompt = str(first.get("prompt", first.get("text", "")))
        reference = str(first.get("reference", first.get("label", "")))
        out.append({"index": k, "origin": first.get("origin", ""), "prompt": prompt, "reference": reference,
                    "answers": dict(zip(names, answers, strict=True)), "scores": dict(zip(names, scores, strict=True)),
                    "status": status})  # fmt: skip
    return out


def _status(before: float, after: float, other_answer: bool) -> str:
    if after != before:
        return "improved" if after > before else "regressed"
    return "changed" if other_answer else "same"


def interval_text(metric: str, found: dict[str, Any] | None, percent: bool | None = None) -> str:
    """An interval document ({estimate, low, high}) as "x [low, high]", in % for rates (or as `percent` says)."""
    if not found:
        return "—"
    scale = 100 if (is_rate(metric) if percent is None else percent) else 1
    unit = "%" if scale == 100 else ""
    return f"{scale * found['estimate']:.3g}{unit} [{scale * found['low']:.3g}, {scale * found['high']:.3g}]"


def test_text(found: dict[str, Any] | None, scale: float = 1) -> tuple[str, bool | None]:
    """A paired test document as "Δ [low, high] p=..", and whether it is significant (None: no test)."""
    if not found:
        return "—", None
    d = found["delta"]
    p, significant = shown_verdict(found)
    unit = " pp" if scale == 100 else ""
    text = f"{scale * d['estimate']:+.3g}{unit} [{scale * d['low']:+.3g}, {scale * d['high']:+.3g}] p={p:.3g}"
    return text + ("" if significant else " n.s."), significant


def robustness_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]], list[bool | None]]:
    """robustness.json as a table: one row per perturbation, per model its score and its change from clean."""
    models, metric = doc.get("models", []), doc.get("metric", "score")
    header = ["perturbation", "rows changed", *[f"{m}: {metric}" for m in models], *[f"{m}: change" for m in models]]
    rows = [["clean", "—", *[interval_text(metric, doc["clean"].get(m)) for m in models], *["—"] * len(models)]]
    flags: list[bool | None] = [None]
    for entry in doc.get("perturbations", []):
        per = entry.get("models", {})
        changes = [test_text(per.get(m, {}).get("change"), 100 if is_rate(metric) else 1) for m in models]
        scores = [interval_text(metric, per.get(m, {}).get("score")) for m in models]
        rows.append(
            [entry["name"], f"{entry.get('changed', 0)}/{entry.get('scored', 0)}", *scores, *[c for c, _ in changes]]
        )
        flags.append(any(f for _, f in changes) if changes else None)
    return header, rows, flags


def bias_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """bias.json as a table: one row per attribute and model (changed answers, mean |gap|, mean gap), and the
    worst pairs of every row."""
    header = ["attribute", "model", "pairs", "answers changed", f"mean |gap| ({doc.get('gap_unit', '')})", "mean gap"]
    rows, worst = [], []
    for entry in doc.get("attributes", []):
        for model, found in entry.get("models", {}).items():
            cells = [
                interval_text("changed", found.get("changed_rate"), percent=True),
                interval_text("gap", found.get("mean_abs_gap")),
                interval_text("gap", found.get("mean_gap")),
            ]
            rows.append([entry["attribute"], model, str(entry.get("pairs", "")), *cells])
            worst += [{"attribute": entry["attribute"], "model": model, **w} for w in found.get("worst", [])[:3]]
    return header, rows, worst
