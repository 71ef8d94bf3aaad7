"""report.html and report.md: built from an evaluation's files, rendered in a real headless Chromium (Debian's
chromium and chromium-driver, driven by selenium) with its plots loaded and its example filter working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from selenium.webdriver.support.ui import Select

from tests.browser import headless_chromium
from tunelab.eval.compare import summarize
from tunelab.eval.diagnose import diagnose_run
from tunelab.eval.metrics import exact_match, token_f1
from tunelab.eval.report import run_report

COLOURS = {"cat": "red", "dog": "blue", "sky": "blue", "mat": "red", "one": "red", "two": "blue"}


def rows(answers: list[str]) -> list[dict]:
    words = list(COLOURS)
    out = []
    for k, answer in enumerate(answers):
        word = words[k % len(words)]
        reference = COLOURS[word]
        out.append({"origin": f"val.jsonl:{k + 1}", "prompt": f"what is color of {word} <{k}>", "reference": reference,
                    "prediction": answer, "exact_match": exact_match(answer, reference),
                    "token_f1": token_f1(answer, reference)})  # fmt: skip
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder as training leaves it: both prediction files, eval_stats.json, metrics.jsonl, the diagnosis,
    and the suites' JSON in eval/."""
    folder = tmp_path / "run"
    (folder / "eval").mkdir(parents=True)
    base = rows(["green"] * 12)
    tuned = rows([COLOURS[list(COLOURS)[k % 6]] if k < 8 else "red <b>&</b>" for k in range(12)])
    for name, found in (("predictions_base.jsonl", base), ("predictions.jsonl", tuned)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in found))
    metrics = {"exact_match": sum(r["exact_match"] for r in tuned) / 12, "val_loss": 0.8}
    before = {"exact_match": 0.0, "val_loss": 2.1}
    stats = summarize({"base": (before, base), "tuned": (metrics, tuned)}, resamples=500)
    (folder / "eval_stats.json").write_text(json.dumps(stats.to_dict()))
    lines = [{"step": s, "loss": 2.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 13)]
    lines += [{"step": s, "val_loss": v} for s, v in ((4, 1.2), (8, 0.85), (12, 0.84))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    diagnose_run(folder)
    interval = {"estimate": 0.5, "low": 0.2, "high": 0.8, "confidence": 0.95}
    test = {"test": "McNemar (exact)", "delta": {**interval, "estimate": -0.25, "low": -0.5, "high": 0.0},
            "p_value": 0.25, "alpha": 0.05, "significant": False, "discordant": [3, 0]}  # fmt: skip
    robustness = {"suite": "robustness", "metric": "exact_match", "seed": 0, "rows": 12, "models": ["base", "tuned"],
                  "clean": {"base": interval, "tuned": interval},
                  "perturbations": [{"name": "typos", "changed": 11, "scored": 12,
                                     "models": {m: {"score": interval, "change": test} for m in ("base", "tuned")}}],
                  "notes": []}  # fmt: skip
    bias = {"suite": "bias", "gap_unit": "nats", "models": ["tuned"], "limits": ["A probe, not a proof."],
            "attributes": [{"attribute": "gender", "pairs": 5, "models": {"tuned": {
                "changed_rate": interval, "mean_abs_gap": interval, "mean_gap": interval,
                "worst": [{"text": "he asked", "counterfactual": "she asked", "gap": 0.4}]}}}]}  # fmt: skip
    (folder / "eval" / "robustness.json").write_text(json.dumps(robustness))
    (folder / "eval" / "bias.json").write_text(json.dumps(bias))
    return folder


def test_report_files_hold_every_section(run_dir: Path) -> None:
    html_path, md_path = run_report(run_dir)
    page = html_path.read_text()
    for heading in ("Metrics", "Plots", "Fitting diagnosis", "Robustness", "Bias probe", "Examples"):
        assert f"<h2>{heading}</h2>" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it opens offline
    assert page.count("data:image/png;base64,") == 2  # the metrics chart and the learning curves
    assert "red &lt;b&gt;&amp;&lt;/b&gt;" in page  # answers are escaped, not markup
    md = md_path.read_text()
    assert "| exact_match | 0.0% [0, 0] | 66.7% [" in md and "## Fitting diagnosis: good fit" in md
    assert md.count("| improved |") == 8 and "## Robustness" in md


def test_report_without_optional_files(tmp_path: Path) -> None:
    (tmp_path / "predictions.jsonl").write_text(json.dumps(rows(["red"])[0]) + "\n")
    page = run_report(tmp_path)[0].read_text()
    assert "No metrics were recorded" in page and "<h2>Examples</h2>" in page
    assert "Fitting diagnosis" not in page and "Robustness" not in page


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    html_path, _ = run_report(run_dir)
    driver = headless_chromium(tmp_path / "profile", 1100, 1400)
    try:
        driver.get(html_path.as_uri())
        assert driver.title == "Evaluation of run"
        widths = driver.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 2 and all(w > 0 for w in widths)

        def shown() -> int:
            return int(driver.execute_script(
                "return [...document.querySelectorAll('#examples tbody tr')].filter(r => r.style.display !== 'none')"
                ".length"))  # fmt: skip

        assert shown() == 12
        Select(driver.find_element("id", "status")).select_by_value("improved")
        assert shown() == 8
        Select(driver.find_element("id", "status")).select_by_value("all")
        driver.find_element("id", "search").send_keys("<b>")
        assert shown() == 4
        assert driver.find_element("id", "shown").text == "4 of 12 shown"
        assert driver.find_element("css selector", ".verdict").text == "good fit"
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG"
    finally:
        driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
