"""The run's before/after table: intervals and paired tests from the run folder's two prediction files."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from tunelab.eval.evaluate import answer_scores, write_predictions
from tunelab.recipes.run import _report


def _predictions(run_dir: Path, name: str, answers: list[str]) -> dict[str, float]:
    rows = [{"origin": f"val.jsonl:{k}", "prompt": f"q{k}", "reference": "2021-03-05", "prediction": a}
            for k, a in enumerate(answers)]  # fmt: skip
    metrics = answer_scores(rows)
    write_predictions(rows, run_dir / name)
    return metrics


def test_before_after_table_and_eval_stats(tmp_path: Path) -> None:
    base = _predictions(tmp_path, "predictions_base.jsonl", ["2021-03-05"] * 3 + ["05.03.2021"] * 27)
    tuned = _predictions(tmp_path, "predictions.jsonl", ["2021-03-05"] * 28 + ["2021-3-5"] * 2)
    console = Console(file=io.StringIO(), width=160, color_system=None)
    _report(console, tmp_path, {"val_loss": 2.0, **base}, {"val_loss": 1.0, "steps": 9, **tuned}, samples=0)
    text = console.file.getvalue()
    assert "Validation before and after training (30 examples)" in text
    exact = next(line for line in text.splitlines() if line.startswith("│ exact_match"))
    assert "10.0% [" in exact and "93.3% [" in exact and "<0.001" in exact and "n.s." not in exact
    stats = json.loads((tmp_path / "eval_stats.json").read_text())
    assert stats["columns"] == ["base", "tuned"] and stats["paired"]
    assert stats["tests"]["exact_match"]["discordant"] == [0, 25]  # 25 rows right only after training
    assert "steps" not in stats["values"]["tuned"] and "val_loss" not in stats["tests"]
