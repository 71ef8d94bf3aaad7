"""What a user sees from the real command: a plain run prints tunelab's own lines and no warning from a library
it does not use (DeepSpeed is installed in the test environment; neither a LoRA run nor a full one, whose result
transformers saves through accelerate's unwrapping, must wake it), and
`tunelab --help` answers without importing the model code."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_errors import tunelab
from tests.tiny import write_color_task


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_plain_run_prints_no_library_warning(method: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "color.jsonl", 24)
    done = tunelab("train", "--data", str(data), "--set", f"method={method}", "--set", f"model.source={tiny_model_dir}",
                   "--set", f"output.dir={tmp_path / 'runs'}", "--set", "training.max_steps=2", "--set",
                   "eval.baseline=false", "--set", "eval.generate=false")  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "run folder:" in output
    for noise in ("WARNING", "Warning", "DeepSpeed", "deepspeed", "Setting accelerator"):
        assert noise not in output, f"{noise!r} in the output of a plain run:\n{output}"


def test_help_does_not_import_model_code() -> None:
    probe = "import sys; from tunelab.cli.args import build_parser; build_parser(); print('torch' in sys.modules)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert time.perf_counter() - started < 5
    assert "usage: tunelab" in tunelab("--help").stdout
