"""What `tunelab monitor` writes: `monitor.json` (every window's signals and alerts), `monitor.md` (a table per
window and the alert lines) and `monitor.png` (the signals over time, with their thresholds)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display

import matplotlib.pyplot as plt

from tunelab.core.files import write_text
from tunelab.recipes.monitor.monitor import MonitorResult

TABLE = (
    ("input_chars_mean", "input length (chars, mean)"), ("input_length_p", "input length KS p"),
    ("charset_distance", "charset distance (TV)"), ("unseen_rate", "unseen-word rate"),
    ("embedding_mmd", "embedding MMD²"), ("embedding_p", "embedding drift p"),
    ("answer_chars_mean", "answer length (chars, mean)"), ("answer_length_p", "answer length KS p"),
    ("empty_rate", "empty answers"), ("refusal_rate", "refusals"), ("json_invalid_rate", "answers not JSON"),
    ("feedback_rate", "feedback per request"), ("thumbs_down_rate", "thumbs down / ratings"),
)  # fmt: skip
PLOTS = (
    ("p-values (log scale)", ("embedding_p", "input_length_p", "answer_length_p"), True),
    ("rates", ("unseen_rate", "empty_rate", "refusal_rate", "thumbs_down_rate", "charset_distance"), False),
    ("mean length (chars)", ("input_chars_mean", "answer_chars_mean"), False),
)


def write_report(result: MonitorResult, out: Path) -> dict[str, Path]:
    """The three files in `out` (created); their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "monitor.json", "markdown": out / "monitor.md", "plot": out / "monitor.png"}
    write_text(paths["json"], json.dumps(as_json(result), indent=2))
    write_text(paths["markdown"], markdown(result))
    plot(result, paths["plot"])
    return paths


def as_json(result: MonitorResult) -> dict[str, Any]:
    return {
        "run": result.run, "log": result.log, "reference": result.reference,
        "settings": result.settings.model_dump(), "windows": [asdict(w) for w in result.windows],
        "alerts": result.alerts,
    }  # fmt: skip


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(result: MonitorResult) -> str:
    ref = result.reference
    lines = [
        f"# Monitor: {result.run}", "",
        f"Log `{result.log}`, {len(result.windows)} windows of {result.settings.window:g} s. Reference: "
        f"{ref['inputs']} training inputs (mean {_cell(ref['input_chars_mean'])} chars), unseen-word rate of the "
        f"training data against itself {ref['unseen_rate']:.4g}{', JSON answers' if ref['json_answers'] else ''}.",
        "", "## Alerts", "",
    ]  # fmt: skip
    lines += [f"- {a}" for a in result.alerts] or ["None: every signal within its threshold."]
    header = ["signal"] + [f"{_when(w.start)} ({w.requests})" for w in result.windows]
    lines += ["", "## Windows (UTC start, requests)", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]  # fmt: skip
    for key, label in TABLE:
        lines.append("| " + " | ".join([label] + [_cell(w.signals.get(key)) for w in result.windows]) + " |")
    untested = [_when(w.start) for w in result.windows if not w.tested]
    if untested:
        lines += ["", f"Not tested (fewer than {result.settings.min_requests} requests): {', '.join(untested)}."]
    return "\n".join(lines) + "\n"


def plot(result: MonitorResult, path: Path) -> None:
    starts = [w.start for w in result.windows]
    hours = [(s - starts[0]) / 3600 for s in starts]
    fig, axes = plt.subplots(len(PLOTS), 1, figsize=(9, 3 * len(PLOTS)), sharex=True)
    for ax, (title, keys, log_scale) in zip(axes, PLOTS, strict=True):
        for key in keys:
            points = [(h, w.signals.get(key)) for h, w in zip(hours, result.windows, strict=True)]
            points = [(h, v) for h, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=key)
            limit = getattr(result.settings, key, None)
            if isinstance(limit, float) and points:
                ax.axhline(limit, linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color())
        if log_scale and ax.lines:
            ax.set_yscale("log")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[-1].set_xlabel(f"hours since {_when(starts[0])} UTC")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
