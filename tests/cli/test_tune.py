"""`tunelab tune` mistakes through the real command: one paragraph on stderr, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from tests.recipes.tune.common import LR, study_config, tunelab


def test_bad_tune_input_exits_2_without_traceback(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = study_config(tmp_path, tiny_model_dir, {"params": {"training.lerning_rate": LR}})
    done = tunelab("tune", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Did you mean 'training.learning_rate'?" in done.stderr
    path = study_config(tmp_path, tiny_model_dir, {"params": {"training.learning_rate": LR}})
    url = "postgresql+psycopg://tuner:secret@127.0.0.1:1/studies"
    done = tunelab("tune", str(path), "--storage", url, "--trials", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot be opened" in done.stderr and "secret" not in done.stderr
    assert not list((tmp_path / "runs").glob("*/trial-*"))  # nothing trained
