"""`tunelab eval RUN --suite ...` writes report.html / report.md with the suites' sections: the run's own report
when the suites go to the run's eval/ (the default), a report in --suite-out otherwise, which still shows the
run's fitting diagnosis."""

from __future__ import annotations

import json
from pathlib import Path

from tests.eval.suites.test_cli import chat, fake_run, write_rows
from tunelab.cli.main import main

DIAGNOSIS = {"verdict": "overfitting", "evidence": ["validation loss ends 9% above its minimum"], "advice": ["stop"]}


def test_suites_refresh_the_run_report_and_write_one_beside_other_output(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = fake_run(tmp_path / "run", tiny_model_dir, "sft")
    (run / "diagnosis.json").write_text(json.dumps(DIAGNOSIS))
    data = write_rows(tmp_path / "test.jsonl", [chat("what is color of cat", "red"), chat("she saw the sky", "blue")])
    common = ["eval", str(run), "--data", str(data), "--max-new-tokens", "2", "--attribute", "gender"]

    assert main([*common, "--suite", "robustness", "--perturb", "case", "--perturb", "typos"]) == 0
    page, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    assert "<h2>Robustness</h2>" in page and "<h2>Bias probe</h2>" not in page and "overfitting" in page
    robustness = md.split("## Robustness", 1)[1]
    assert "case" in robustness and "typos" in robustness and "whitespace" not in robustness

    out = tmp_path / "elsewhere"
    assert main([*common, "--suite", "bias", "--suite-out", str(out)]) == 0
    page, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "<h2>Bias probe</h2>" in page and "gender" in md.split("## Bias probe", 1)[1]
    assert "<h2>Robustness</h2>" not in page, "the run's eval/ robustness.json is not this output's suite"
    assert "## Fitting diagnosis: overfitting" in md
