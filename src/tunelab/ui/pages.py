"""The pages' content, read from the folders: the run page's sections (config, data report and rejects, eval
tables with intervals, base-vs-tuned predictions with filters, diagnosis, checkpoints), the study and monitor
pages, and the Jinja2 templates (autoescaped: run files hold user data) that render them."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from tunelab.eval.report_tables import example_diffs, metric_rows
from tunelab.ui.runs_index import CONFIG, read_json, read_metrics, read_run_config

MAX_EXAMPLES = 500
"""Prediction rows one page shows (the filters narrow them; the count says how many matched)."""
MAX_REJECTS = 200
MAX_TEXT = 200_000
"""Characters of a text file (config, data report, log) a page shows."""

templates = Environment(loader=PackageLoader("tunelab.ui", "templates"), autoescape=select_autoescape(["html"]))


def age(seconds_ago: float) -> str:
    """'42 s', '5 min', '3 h', '2 d' ago."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds_ago >= size:
            return f"{seconds_ago / size:.0f} {unit}"
    return f"{max(0.0, seconds_ago):.0f} s"


templates.filters["age"] = age
templates.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)


def read_text(path: Path, limit: int = MAX_TEXT) -> str | None:
    """A text file's start (at most `limit` characters), or None when it is missing or unreadable."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return None


def read_jsonl(path: Path, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` JSON-object lines of a file (bad lines skipped), and how many lines it holds in all."""
    rows, total = [], 0
    if not path.is_file():
        return rows, total
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            total += 1
            if len(rows) < limit:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    return rows, total


def eval_table(run_dir: Path) -> dict[str, Any] | None:
    """eval_stats.json as the report's metrics table (values with intervals, paired tests), or None."""
    stats = read_json(run_dir / "eval_stats.json")
    if not stats or "values" not in stats:
        return None
    try:
        header, rows, significant = metric_rows({"intervals": {}, **stats})
    except (KeyError, TypeError, ValueError):
        return None
    return {"header": header, "rows": rows, "significant": significant, "examples": stats.get("examples")}


def predictions(run_dir: Path, status: str = "all", query: str = "") -> dict[str, Any]:
    """Per-example answers, base vs tuned (when the run scored its base), filtered by status and a search text."""
    tuned, _ = read_jsonl(run_dir / "predictions.jsonl", 100_000)
    base, _ = read_jsonl(run_dir / "predictions_base.jsonl", 100_000)
    columns = {"base": base, "tuned": tuned} if base else {"tuned": tuned}
    rows = example_diffs(columns) if tuned else []
    counts = {s: sum(r["status"] == s for r in rows) for s in ("improved", "regressed", "changed", "same")}
    needle = query.strip().lower()
    shown = [r for r in rows if (status == "all" or r["status"] == status) and (not needle or needle in _text(r))]
    return {"columns": list(columns), "rows": shown[:MAX_EXAMPLES], "matched": len(shown), "total": len(rows),
            "counts": counts, "status": status, "query": query}  # fmt: skip


def _text(row: dict[str, Any]) -> str:
    return " ".join([row["prompt"], row["reference"], *row["answers"].values()]).lower()


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Each checkpoint folder: step, whether it is the final one, size and age."""
    out = []
    for folder in sorted((run_dir / "checkpoints").glob("step-*"), reverse=True):
        if not folder.is_dir():
            continue
        state = read_json(folder / "state.json") or {}
        files = [f for f in folder.iterdir() if f.is_file()]
        out.append({"name": folder.name, "step": state.get("step"), "finished": bool(state.get("finished")),
                    "readable": bool(state), "mb": sum(f.stat().st_size for f in files) / 2**20,
                    "age": age(time.time() - folder.stat().st_mtime)})  # fmt: skip
    return out


def data_report(run_dir: Path) -> dict[str, Any]:
    """The data report (markdown as written), its rejects with reasons, and the lengths summary."""
    rejects, total = read_jsonl(run_dir / "rejects.jsonl", MAX_REJECTS)
    doc = read_json(run_dir / "data_report.json") or {}
    return {"markdown": read_text(run_dir / "data_report.md"), "rejects": rejects, "rejects_total": total,
            "by_reason": doc.get("rejected_by_reason") or {}, "lengths": doc.get("lengths")}  # fmt: skip


def run_page(run_dir: Path, status: str, query: str) -> dict[str, Any]:
    """Everything the run page shows besides its live parts (curves, status, log), which it polls."""
    _, problem = read_run_config(run_dir)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    return {
        "config_text": read_text(run_dir / CONFIG),
        "config_problem": problem,
        "bad_lines": metrics.bad_lines,
        "eval": read_json(run_dir / "eval.json"),
        "eval_table": eval_table(run_dir),
        "diagnosis": read_json(run_dir / "diagnosis.json"),
        "data": data_report(run_dir),
        "predictions": predictions(run_dir, status, query),
        "checkpoints": checkpoints(run_dir),
        "has_report": (run_dir / "report.html").is_file(),
        "has_monitor": (run_dir / "monitor" / "monitor.json").is_file(),
    }


def study_page(folder: Path) -> dict[str, Any]:
    """trials.csv as a table, the study's plots and best.yaml."""
    text = read_text(folder / "trials.csv") or ""
    rows = list(csv.reader(text.splitlines()))
    return {"header": rows[0] if rows else [], "rows": rows[1:], "plots": sorted(p.name for p in folder.glob("*.png")),
            "best": read_text(folder / "best.yaml"), "markdown": read_text(folder / "trials.md")}  # fmt: skip


def monitor_page(run_dir: Path) -> dict[str, Any]:
    """RUN/monitor's report: alerts, the windows table (monitor.md) and the plot."""
    folder = run_dir / "monitor"
    doc = read_json(folder / "monitor.json") or {}
    return {"alerts": doc.get("alerts") or [], "windows": len(doc.get("windows") or []), "log": doc.get("log"),
            "markdown": read_text(folder / "monitor.md"), "plot": (folder / "monitor.png").is_file()}  # fmt: skip
