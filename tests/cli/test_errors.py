"""User mistakes through the real command: one paragraph on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def tunelab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_misspelled_key_exits_2_with_suggestion(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  train: train.jsonl\ntraining:\n  learnig_rate: 1e-4\n")
    done = tunelab("validate", str(config))
    assert done.returncode == 2
    assert f"{config}:4" in done.stderr and "Did you mean 'learning_rate'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_good_config_exits_0(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    config = tmp_path / "good.yaml"
    config.write_text("data:\n  train: train.jsonl\n")
    done = tunelab("validate", str(config))
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout


def test_train_missing_data_file_and_model_path(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  train: nowhere.jsonl\n")
    done = tunelab("train", str(config), "--set", f"output.dir={tmp_path}")
    assert done.returncode == 2 and "nowhere.jsonl" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    done = tunelab("train", "--data", str(tmp_path / "t.jsonl"), "--set", f"model.source={tmp_path / 'no-model'}",
                   "--set", f"output.dir={tmp_path}")  # fmt: skip
    assert done.returncode == 2 and "no-model" in done.stderr and "Traceback" not in done.stderr
