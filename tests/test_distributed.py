"""The same `tunelab train` under torchrun with 2 CPU processes (gloo) matches one process with the same
global batch: one process with batch 4 and 2 accumulation steps sees exactly the batches that 2 processes with
batch 4 see together, and the loss is normalised over the target tokens of all of them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import write_color_task


def config(tmp_path: Path, model_dir: Path, name: str, grad_accum: int) -> Path:
    data = tmp_path / "color.jsonl"
    if not data.exists():
        write_color_task(data, 200)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
model: {{source: {model_dir}}}
data: {{train: {data}}}
method: {{name: lora, r: 4}}
training: {{precision: fp32, max_steps: 12, batch_size: 4, grad_accum: {grad_accum}, learning_rate: 3.0e-3,
            log_every: 3, num_threads: 1}}
eval: {{baseline: false, generate: false}}
output: {{dir: {tmp_path / "runs"}, name: {name}}}
"""
    )
    return path


def test_two_process_ddp_matches_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    single = config(tmp_path, tiny_model_dir, "single", grad_accum=2)
    subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(single)], check=True, capture_output=True)
    ddp = config(tmp_path, tiny_model_dir, "ddp", grad_accum=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    done = subprocess.run(
        [*launch, "-m", "tunelab.cli", "train", str(ddp)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    a = load_file(tmp_path / "runs" / "single" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "runs" / "ddp" / "adapter" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    losses = {
        name: [x["loss"] for x in map(json.loads, (tmp_path / "runs" / name / "metrics.jsonl").open()) if "loss" in x]
        for name in ("single", "ddp")
    }
    assert len(losses["ddp"]) == 4  # written once, by the main process
    assert losses["single"] == pytest.approx(losses["ddp"], rel=1e-4)
