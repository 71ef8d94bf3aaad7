"""Resuming is checked against the run it continues: a config or data that differs from the checkpoint's is
refused with the differing keys listed (`--resume-changed` accepts on purpose; logging and checkpoint keys may
change); `tunelab train RUN_FOLDER --resume` resumes that very folder, even when the run's output.name was unset
and its config file's name points at another run."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import tiny_config
from tests.tiny import write_color_task
from tunelab.cli.main import main as cli_main
from tunelab.config import dump_config
from tunelab.core.errors import ConfigError
from tunelab.recipes.run import run_training

SHORT = ["training.max_steps=4", "training.save_every=2", "training.keep_checkpoints=3", "training.log_every=1",
         "eval.baseline=false", "eval.generate=false", "training.num_threads=1"]  # fmt: skip


def stopped_run(tmp_path: Path, model_dir: Path, name: str, *overrides: str):
    """A run stopped after its step-2 checkpoint (as a kill leaves it: later checkpoint and result gone)."""
    cfg = tiny_config(tmp_path, model_dir, *SHORT, *overrides, name=name)
    run_dir = run_training(cfg).run_dir
    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")
    shutil.rmtree(run_dir / "adapter")
    return cfg, run_dir


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_changed_config_or_data_is_refused_with_the_keys_listed(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, run_dir = stopped_run(tmp_path, tiny_model_dir, "checked")
    changed = tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.learning_rate=1e-2", "method.r=8",
                          "training.scheduler=linear", name="checked")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        run_training(changed, resume=True)
    message = str(caught.value)
    for key in ("training.learning_rate: 0.003 → 0.01", "method.r: 16 → 8", "training.scheduler: cosine → linear"):
        assert key in message
    assert "--resume-changed" in message and "step-00000002" in message
    assert not (run_dir / "adapter").exists(), "nothing was trained"

    # The same data path with other contents is a change too.
    data = Path(cfg.data.train[0])
    original = data.read_bytes()
    write_color_task(data, 160, seed=1)
    with pytest.raises(ConfigError, match=r"data\.train: the files' contents differ"):
        run_training(cfg, resume=True)
    data.write_bytes(original)

    # Logging and checkpoint keys may change; the run resumes and finishes.
    relaxed = tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.log_every=2", "training.keep_checkpoints=1",
                          "eval.max_examples=4", name="checked")  # fmt: skip
    assert run_training(relaxed, resume=True).final["steps"] == 4

    # --resume-changed accepts a changed config on purpose, and says what changed; one whose weights no longer
    # fit (another LoRA rank) is a clear error.
    shutil.rmtree(run_dir / "adapter")
    config = tmp_path / "changed.yaml"
    config.write_text(dump_config(changed))
    assert cli_main(["train", str(config), "--resume", "--resume-changed"]) == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and "Traceback" not in err
    changed = tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.learning_rate=1e-2", name="checked")
    config.write_text(dump_config(changed))
    assert cli_main(["train", str(config), "--resume"]) == 2
    assert "training.learning_rate" in capsys.readouterr().err
    assert cli_main(["train", str(config), "--resume", "--resume-changed"]) == 0
    assert "resuming with a changed config: training.learning_rate" in capsys.readouterr().out
    assert (run_dir / "adapter").is_dir()


def test_resuming_a_run_folder_resumes_that_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "color.jsonl", 160)
    runs = tmp_path / "runs"
    raw = {
        "model": {"source": str(tiny_model_dir)},
        "data": {"train": [str(data)]},
        "method": {"name": "lora", "r": 4},
        "training": {"precision": "fp32", "max_steps": 4, "save_every": 2, "batch_size": 8, "num_threads": 1},
        "eval": {"baseline": False, "generate": False},
        "output": {"dir": str(runs)},  # no name: each run folder is named after its config file
    }
    # An unrelated, finished run named after a config file called config.yaml ...
    other = tmp_path / "config.yaml"
    other.write_text(yaml.safe_dump(raw))
    assert cli_main(["train", str(other)]) == 0
    untouched = digests(runs / "config")
    # ... and the run to resume, stopped after its step-2 checkpoint. Its folder's own config is config.yaml too,
    # whose name once pointed the resume at runs/config.
    mine = tmp_path / "exp.yaml"
    mine.write_text(yaml.safe_dump(raw))
    assert cli_main(["train", str(mine)]) == 0
    shutil.rmtree(runs / "exp" / "checkpoints" / "step-00000004")
    shutil.rmtree(runs / "exp" / "adapter")

    assert cli_main(["train", str(runs / "exp"), "--resume"]) == 0
    assert (runs / "exp" / "adapter" / "adapter_model.safetensors").is_file()
    assert digests(runs / "config") == untouched, "the unrelated run was not touched"

    # A moved run folder resumes where it is now.
    shutil.move(runs / "exp", tmp_path / "moved")
    shutil.rmtree(tmp_path / "moved" / "checkpoints" / "step-00000004")
    shutil.rmtree(tmp_path / "moved" / "adapter")
    assert cli_main(["train", str(tmp_path / "moved"), "--resume"]) == 0
    assert (tmp_path / "moved" / "adapter").is_dir() and not (runs / "exp").exists()
