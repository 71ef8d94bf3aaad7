"""A run killed mid-training and resumed ends with the same weights and metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.tiny import write_color_task

TIMING_KEYS = {"tokens_per_s", "peak_mem_mb", "elapsed_s"}


def write_config(tmp_path: Path, model_dir: Path, name: str) -> Path:
    data = tmp_path / "color.jsonl"
    if not data.exists():
        write_color_task(data, 400)
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"""
model: {{source: {model_dir}}}
data: {{train: {data}}}
method: {{name: lora, r: 4, dropout: 0.1}}
training:
  precision: fp32
  max_steps: 150
  batch_size: 4
  grad_accum: 2
  learning_rate: 1.0e-3
  save_every: 10
  eval_every: 25
  log_every: 5
  keep_checkpoints: 3
eval: {{baseline: false, generate: false}}
output: {{dir: {tmp_path / "runs"}, name: {name}}}
"""
    )
    return config


def tunelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", *args]


def comparable(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def test_killed_then_resumed_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = write_config(tmp_path, tiny_model_dir, "straight")
    subprocess.run(tunelab("train", str(straight)), check=True, env=env, capture_output=True)

    killed = write_config(tmp_path, tiny_model_dir, "killed")
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(tunelab("train", str(killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "adapter").exists(), "the run finished before it could be killed"
    killed_at = sorted((run_dir / "checkpoints").glob("step-*"))[-1].name
    assert killed_at < "step-00000150"

    done = subprocess.run(tunelab("train", str(killed), "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    a = load_file(tmp_path / "runs" / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert comparable(run_dir) == comparable(tmp_path / "runs" / "straight")


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path, tiny_model_dir, "never")
    done = subprocess.run(tunelab("train", str(config), "--resume"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "Cannot resume" in done.stderr and "Traceback" not in done.stderr
