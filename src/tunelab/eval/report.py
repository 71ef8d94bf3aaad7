"""One report per evaluation: report.html (self-contained: inline CSS, a few lines of vanilla JS, plots as base64
PNG, so it opens offline and travels as one file) and report.md with the same tables.

It is built from the files an evaluation leaves, never from live objects, so any folder can be reported again:
the intervals and paired tests (`Comparison.to_dict()`: eval_stats.json of a run, comparison.json or
<predictions>_stats.json of `tunelab eval`), each column's prediction rows, and whichever of diagnosis.json /
learning_curves.png, robustness.json, bias.json and reliability diagrams (in the folder or its eval/) exist. A
section whose file is missing is left out.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.core.files import write_text
from tunelab.eval.diagnose import CURVES_FILE, DIAGNOSIS_FILE
from tunelab.eval.report_tables import (
    Rows,
    bias_rows,
    example_diffs,
    metric_rows,
    metrics_chart,
    read_rows,
    robustness_rows,
)

SHOWN_DIFFS_MD = 50
"""report.md lists at most this many changed examples (report.html has them all, with filters)."""


@dataclass
class ReportInput:
    """What a report shows: the comparison document, each column's prediction rows (the first column is the base
    when there are two), and the folder searched for the optional sections."""

    title: str
    stats: dict[str, Any]
    columns: dict[str, Rows]
    folder: Path
    also: tuple[Path, ...] = ()
    """Folders searched after `folder` for the run's own sections, the fitting diagnosis and learning curves (the
    run folder beside a suite's output); suite results are read from `folder` only."""


@dataclass
class Sections:
    diagnosis: dict[str, Any] | None
    robustness: dict[str, Any] | None
    bias: dict[str, Any] | None
    pictures: list[tuple[str, bytes]]
    """(caption, PNG bytes) of every plot: the metrics chart, learning curves, reliability diagrams."""


def run_report(run_dir: Path) -> tuple[Path, Path]:
    """report.html and report.md of a finished run: before/after intervals, both prediction files, diagnosis."""
    stats, columns = _run_columns(run_dir)
    return write_report(ReportInput(f"Evaluation of {run_dir.name}", stats, columns, run_dir), run_dir)


def suite_report(out: Path, run_dir: Path | None) -> tuple[Path, Path]:
    """The report after `tunelab eval --suite`: with a run whose suites went to its own folder or its eval/, the
    run's report.html/report.md again, now with the robustness and bias sections; otherwise a report in `out`, with
    the run's metrics, answers and diagnosis beside the suites' sections when a run was scored."""
    if run_dir is not None and out.resolve() in (run_dir.resolve(), (run_dir / "eval").resolve()):
        return run_report(run_dir)
    if run_dir is None:
        return write_report(ReportInput(f"Suites on {out.name}", {}, {}, out), out)
    stats, columns = _run_columns(run_dir)
    return write_report(ReportInput(f"Suites on {run_dir.name}", stats, columns, out, (run_dir,)), out)


def _run_columns(run_dir: Path) -> tuple[dict[str, Any], dict[str, Rows]]:
    """A run's comparison document and its base and tuned prediction rows (those it has)."""
    stats = _load(run_dir, "eval_stats.json") or {}
    columns = {"base": read_rows(run_dir / "predictions_base.jsonl"), "tuned": read_rows(run_dir / "predictions.jsonl")}
    return stats, {name: rows for name, rows in columns.items() if rows}


def write_report(data: ReportInput, out_dir: Path) -> tuple[Path, Path]:
    """Write report.html and report.md into `out_dir`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = _sections(data)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    write_text(html_path, page(data, sections))
    write_text(md_path, markdown(data, sections))
    return html_path, md_path


def _find(folder: Path, name: str, also: tuple[Path, ...] = ()) -> Path | None:
    places = [p for f in (folder, *also) for p in (f / name, f / "eval" / name)]
    return next((p for p in places if p.is_file()), None)


def _load(folder: Path, name: str, also: tuple[Path, ...] = ()) -> dict[str, Any] | None:
    path = _find(folder, name, also)
    return json.loads(path.read_text(encoding="utf-8")) if path is not None else None


def _sections(data: ReportInput) -> Sections:
    pictures = []
    chart = metrics_chart(data.stats)
    if chart is not None:
        pictures.append(("Rate metrics with their confidence intervals", chart))
    curves = _find(data.folder, CURVES_FILE, data.also)
    if curves is not None:
        pictures.append(("Learning curves", curves.read_bytes()))
    for png in sorted(data.folder.glob("*reliability*.png")):
        pictures.append((f"Reliability diagram ({png.name})", png.read_bytes()))
    return Sections(_load(data.folder, DIAGNOSIS_FILE, data.also), _load(data.folder, "robustness.json"),
                    _load(data.folder, "bias.json"), pictures)  # fmt: skip


# ---- HTML ----------------------------------------------------------------------------------------------------------

STYLE = """body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;max-width:80em;padding:1em 2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ns td{color:#888}.sig{font-weight:600}.verdict{font-size:1.2em;font-weight:700}.good{color:#1a7f37}
.bad{color:#cf222e}.warn{color:#9a6700}figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:13px;
color:#555}img{max-width:100%;border:1px solid #eee}.filters{margin:.5em 0;display:flex;gap:1em;align-items:center}
tr.improved td:last-child{color:#1a7f37}tr.regressed td:last-child{color:#cf222e}.muted{color:#777;font-size:13px}
pre{white-space:pre-wrap;margin:0;font-family:inherit}"""

SCRIPT = """(function(){
  var status=document.getElementById('status'), search=document.getElementById('search');
  var rows=Array.prototype.slice.call(document.querySelectorAll('#examples tbody tr'));
  function apply(){
    var want=status.value, text=search.value.toLowerCase(), shown=0;
    rows.forEach(function(r){
      var ok=(want==='all'||r.dataset.status===want||(want==='different'&&r.dataset.status!=='same'))&&
             (!text||r.textContent.toLowerCase().indexOf(text)>=0);
      r.style.display=ok?'':'none'; if(ok){shown++;}
    });
    document.getElementById('shown').textContent=shown+' of '+rows.length+' shown';
  }
  status.addEventListener('change',apply); search.addEventListener('input',apply); apply();
})();"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], flags: list[bool | None] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        flag = flags[k] if flags else None
        cls = ' class="ns"' if flag is False else ' class="sig"' if flag else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_html(stats: dict[str, Any]) -> str:
    if not stats:
        return "<p class='muted'>No metrics were recorded for this evaluation.</p>"
    header, rows, flags = metric_rows(stats)
    note = (f"{stats.get('examples', 0)} examples; {100 * stats.get('confidence', 0.95):.0f}% intervals (bootstrap, "
            "McNemar for 0/1 scores). Grey rows: the difference is not significant (n.s.).")  # fmt: skip
    return f"<h2>Metrics</h2><p class='muted'>{_e(note)}</p>{_table(header, rows, flags)}"


def _pictures_html(pictures: list[tuple[str, bytes]]) -> str:
    if not pictures:
        return ""
    figures = "".join(
        f'<figure><img alt="{_e(c)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{_e(c)}</figcaption></figure>"
        for c, png in pictures
    )
    return f"<h2>Plots</h2>{figures}"


def _diagnosis_html(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return ""
    tone = {"good fit": "good", "overfitting": "bad", "unstable": "bad", "underfitting": "warn"}.get(doc["verdict"], "")
    items = "".join(f"<li>{_e(x)}</li>" for x in doc.get("evidence", []))
    advice = "".join(f"<li>{_e(x)}</li>" for x in doc.get("advice", []))
    return (f"<h2>Fitting diagnosis</h2><p class='verdict {tone}'>{_e(doc['verdict'])}</p>"
            f"<h3>Evidence</h3><ul>{items}</ul><h3>Advice</h3><ul>{advice}</ul>")  # fmt: skip


def _robustness_html(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return ""
    header, rows, flags = robustness_rows(doc)
    about = f"{doc.get('rows', '?')} rows, seed {doc.get('seed')}, metric {doc.get('metric')}"
    notes = f"<p class='muted'>{len(doc.get('notes', []))} note(s) in robustness.json</p>" if doc.get("notes") else ""
    return f"<h2>Robustness</h2><p class='muted'>{_e(about)}</p>{_table(header, rows, flags)}{notes}"


def _bias_html(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return ""
    header, rows, worst = bias_rows(doc)
    pairs = _table(["attribute", "model", "text", "counterfactual", "gap"],
                   [[w["attribute"], w["model"], w.get("text", ""), w.get("counterfactual", ""),
                     f"{w.get('gap', 0):+.3g}"] for w in worst])  # fmt: skip
    limits = doc.get("limits")
    limits_html = (
        f"<p class='muted'>{_e(limits if isinstance(limits, str) else ' '.join(limits))}</p>" if limits else ""
    )
    return (f"<h2>Bias probe</h2>{limits_html}{_table(header, rows)}<details><summary>Worst pairs</summary>{pairs}"
            "</details>")  # fmt: skip


def _examples_html(columns: dict[str, Rows]) -> str:
    diffs = example_diffs(columns)
    if not diffs:
        return ""
    names = list(columns)
    header = "".join(f"<th>{_e(h)}</th>" for h in ["#", "prompt", "reference", *names, "status"])
    body = []
    for d in diffs:
        answers = "".join(
            f"<td><pre>{_e(d['answers'][n])}</pre><span class='muted'>{_score_text(d['scores'][n])}</span></td>"
            for n in names
        )
        body.append(f"<tr class='{d['status']}' data-status='{d['status']}'><td>{d['index'] + 1}</td>"
                    f"<td><pre>{_e(d['prompt'])}</pre></td><td><pre>{_e(d['reference'])}</pre></td>{answers}"
                    f"<td>{d['status']}</td></tr>")  # fmt: skip
    options = ["all", "improved", "regressed", "changed", "same", "different"]
    select = "".join(f"<option value='{o}'>{o}</option>" for o in options)
    return (f"<h2>Examples</h2><div class='filters'><label>status <select id='status'>{select}</select></label>"
            "<label>search <input id='search' type='search' placeholder='text in any cell'></label>"
            f"<span id='shown' class='muted'></span></div><table id='examples'><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")  # fmt: skip


def _score_text(score: float | None) -> str:
    return "" if score is None else f"score {score:.2f}"


def page(data: ReportInput, sections: Sections) -> str:
    """The whole report.html."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join([
        _metrics_html(data.stats), _pictures_html(sections.pictures), _diagnosis_html(sections.diagnosis),
        _robustness_html(sections.robustness), _bias_html(sections.bias), _examples_html(data.columns),
    ])  # fmt: skip
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(data.title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(data.title)}</h1><p class='muted'>tunelab report, {when}"
            f"</p>{body}<script>{SCRIPT}</script></body></html>")  # fmt: skip


# ---- Markdown ------------------------------------------------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(data: ReportInput, sections: Sections) -> str:
    """report.md: the same tables as the HTML, the diagnosis, and the first changed examples."""
    parts = [f"# {data.title}\n"]
    if data.stats:
        header, rows, _ = metric_rows(data.stats)
        parts.append(f"## Metrics\n\n{data.stats.get('examples', 0)} examples; n.s. = not significant.\n\n"
                     + _md_table(header, rows))  # fmt: skip
    if sections.diagnosis:
        d = sections.diagnosis
        parts.append(f"## Fitting diagnosis: {d['verdict']}\n\n" + "".join(f"- {x}\n" for x in d["evidence"])
                     + "\nAdvice:\n\n" + "".join(f"- {x}\n" for x in d["advice"]))  # fmt: skip
    if sections.robustness:
        header, rows, _ = robustness_rows(sections.robustness)
        parts.append("## Robustness\n\n" + _md_table(header, rows))
    if sections.bias:
        header, rows, _ = bias_rows(sections.bias)
        parts.append("## Bias probe\n\n" + _md_table(header, rows))
    changed = [d for d in example_diffs(data.columns) if d["status"] != "same"][:SHOWN_DIFFS_MD]
    if changed:
        names = list(data.columns)
        rows = [[str(d["index"] + 1), d["prompt"], d["reference"], *[d["answers"][n] for n in names], d["status"]]
                for d in changed]  # fmt: skip
        parts.append("## Changed examples\n\n" + _md_table(["#", "prompt", "reference", *names, "status"], rows))
    return "\n".join(parts)
