"""Fitting diagnosis: verdicts on hand-written metric lines and on tiny runs built to under- and overfit."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from rich.console import Console

from tests.helpers import tiny_config
from tests.tiny import WORDS
from tunelab.cli.main import main
from tunelab.eval.diagnose import curves_from_lines, diagnose, diagnose_run, spikes
from tunelab.recipes.run import run_training


def lines(train: list[float], val: dict[int, float] | None = None, **extra: float) -> list[dict]:
    """metrics.jsonl lines as the loop writes them: a train line per step, validation lines at the given steps."""
    out: list[dict] = []
    for step, loss in enumerate(train, start=1):
        out.append({"step": step, "epoch": 0, "loss": loss, "lr": 1e-3, "skipped_steps": 0, **extra})
        if val and step in val:
            out.append({"step": step, "epoch": 0, "val_loss": val[step], "val_token_acc": 0.5})
    return out


def test_validation_turning_up_is_overfitting() -> None:
    train = [3.0 - 0.1 * i for i in range(24)]
    val = {4: 2.9, 8: 2.5, 12: 2.3, 16: 2.5, 20: 2.7, 24: 2.9}
    result = diagnose(curves_from_lines(lines(train, val)))
    assert result.verdict == "overfitting"
    assert result.numbers["best_val_step"] == 12 and result.numbers["best_val_loss"] == 2.3
    assert "turned up" in result.evidence[0] and "step 12" in result.evidence[0]
    assert any("early_stopping_patience" in a for a in result.advice)


def test_flat_losses_are_underfitting() -> None:
    train = [5.0, 5.01, 4.99, 5.0, 4.98, 5.0, 4.99, 5.0]
    curves = curves_from_lines(lines(train, {4: 5.1, 8: 5.09}), baseline_val=5.1)
    result = diagnose(curves)
    assert result.verdict == "underfitting"
    assert "fell only 0.2%" in result.evidence[0]
    assert any("learning_rate" in a for a in result.advice)


def test_validation_still_falling_is_underfitting_with_more_epochs() -> None:
    train = [4.0 - 0.1 * i for i in range(16)]
    val = {4: 3.8, 8: 3.4, 12: 3.0, 16: 2.6}
    result = diagnose(curves_from_lines(lines(train, val), baseline_val=4.0))
    assert result.verdict == "underfitting"
    assert result.evidence == ["validation loss was still falling at the end of training", *result.evidence[1:]]
    assert result.advice[0].startswith("train longer")


def test_levelled_validation_is_a_good_fit() -> None:
    train = [4.0, 3.0, 2.4, 2.1, 2.0, 1.95, 1.9, 1.9]
    val = {2: 3.1, 4: 2.3, 6: 2.2, 8: 2.21}
    result = diagnose(curves_from_lines(lines(train, val), baseline_val=4.2))
    assert result.verdict == "good fit", result.evidence
    assert "reached 2.2 at step 6" in result.evidence[0]
    assert "step 6 of 8" in result.advice[0]


def test_spikes_and_skipped_steps_are_unstable() -> None:
    train = [2.0, 1.9, 1.8, 1.8, 6.0, 1.7, 1.7, 1.6, 7.5, 1.6]
    assert spikes(lines_to_pairs(train)) == [5, 9]
    result = diagnose(curves_from_lines(lines(train, {5: 2.0, 10: 1.9})))
    assert result.verdict == "unstable"
    assert "2 loss spikes" in result.evidence[0] and "step(s) 5, 9" in result.evidence[0]
    skipped = curves_from_lines(lines([2.0, 1.9, 1.8, 1.7], skipped_steps=3))
    assert diagnose(skipped).evidence[0].startswith("3 step(s) had a NaN")


def test_diverging_loss_is_unstable() -> None:
    result = diagnose(curves_from_lines(lines([2.0, 2.2, 2.6, 3.1, 3.9, 4.8, 5.5, 6.9])))
    assert result.verdict == "unstable"
    assert "diverging" in result.evidence[0]


def test_too_few_points_is_unknown_and_no_validation_is_said() -> None:
    assert diagnose(curves_from_lines(lines([2.0]))).verdict == "unknown"
    result = diagnose(curves_from_lines(lines([4.0, 3.0, 2.0, 1.5, 1.4, 1.3, 1.25, 1.2])))
    assert result.verdict == "good fit"
    assert any("overfitting cannot be seen" in e for e in result.evidence)


def lines_to_pairs(train: list[float]) -> list[tuple[int, float]]:
    return [(i, v) for i, v in enumerate(train, start=1)]


def _rows(path: Path, n: int, seed: int) -> Path:
    """n rows of random words answered by random words: memorisable, never generalisable."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(n):
            q, a = (" ".join(rng.choice(WORDS) for _ in range(k)) for k in (5, 6))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}))
            fh.write("\n")
    return path


def test_run_built_to_overfit(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, val = _rows(tmp_path / "train.jsonl", 2, seed=1), _rows(tmp_path / "val.jsonl", 4, seed=2)
    cfg = tiny_config(tmp_path, tiny_model_dir, f"data.train={train}", f"data.validation=[{val}]",
                      "method.name=full", "training.epochs=24", "training.batch_size=2", "training.log_every=1",
                      "training.learning_rate=1e-2", "eval.generate=false", name="over")  # fmt: skip
    console = Console(record=True, width=200)
    run_dir = run_training(cfg, console=console).run_dir
    saved = json.loads((run_dir / "diagnosis.json").read_text())
    assert saved["verdict"] == "overfitting", saved
    assert saved["numbers"]["best_val_step"] < saved["numbers"]["last_step"] == 24
    assert saved["numbers"]["train_loss_end"] < 0.5 * saved["numbers"]["train_loss_start"]
    assert (run_dir / "learning_curves.png").stat().st_size > 10_000
    shown = console.export_text()
    assert "fitting: overfitting (validation loss turned up" in shown
    assert f"report: {run_dir / 'report.html'}" in shown
    assert "<h2>Fitting diagnosis</h2><p class='verdict bad'>overfitting</p>" in (run_dir / "report.html").read_text()


def test_run_built_to_underfit(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, "training.learning_rate=1e-7", "training.max_steps=6",
                      "training.log_every=1", "eval.generate=false", name="under")  # fmt: skip
    run_dir = run_training(cfg, console=Console(quiet=True)).run_dir
    saved = json.loads((run_dir / "diagnosis.json").read_text())
    assert saved["verdict"] == "underfitting"
    assert saved["evidence"][0].startswith("validation loss fell only 0.0%")
    # The command diagnoses the existing folder again, with the same verdict.
    (run_dir / "diagnosis.json").unlink()
    assert main(["diagnose", str(run_dir)]) == 0
    assert json.loads((run_dir / "diagnosis.json").read_text()) == saved


@pytest.mark.parametrize("content", [None, '{"step": 1, "loss": 2.0}\nnot json\n'])
def test_diagnose_command_refuses_a_folder_without_metrics(tmp_path: Path, content: str | None, capsys) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert ("metrics.jsonl:2 is not JSON" if content else "has no metrics.jsonl") in err
    assert "Traceback" not in err


def test_diagnosis_file_written_for_hand_written_metrics(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines([3.0, 2.5, 2.0, 1.8])))
    result = diagnose_run(tmp_path)
    assert json.loads((tmp_path / "diagnosis.json").read_text())["verdict"] == result.verdict == "good fit"
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
