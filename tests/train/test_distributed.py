"""The same `tunelab train` under torchrun or `accelerate launch` with 2 CPU processes (gloo) matches one process
with the same global batch: one process with batch 4 and 2 accumulation steps sees exactly the batches that 2
processes with batch 4 see together, and the loss is normalised over the target tokens of all of them.
FSDP: test_distributed_fsdp.py; DeepSpeed: test_distributed_deepspeed.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig
from safetensors.torch import load_file

from tests.helpers import ROOT
from tests.tiny import write_color_task

EXAMPLES = ROOT / "examples" / "accelerate"


def config(
    tmp_path: Path,
    model_dir: Path,
    name: str,
    grad_accum: int,
    method: str = "lora",
    schedule: str = "max_steps: 12, log_every: 3",
) -> Path:
    """A run of the tiny model on the colour task; `schedule`: the training keys that differ between tests."""
    data = tmp_path / "color.jsonl"
    if not data.exists():
        write_color_task(data, 200)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
model: {{source: {model_dir}}}
data: {{train: {data}}}
method: {{name: {method}{", r: 4" if method == "lora" else ""}}}
training: {{precision: fp32, batch_size: 4, grad_accum: {grad_accum}, learning_rate: 3.0e-3, num_threads: 1,
            {schedule}}}
eval: {{baseline: false, generate: false}}
output: {{dir: {tmp_path / "runs"}, name: {name}}}
"""
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> list[float]:
    return [x["loss"] for x in map(json.loads, (run_dir / "metrics.jsonl").open()) if "loss" in x]


def test_two_process_ddp_matches_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    single = config(tmp_path, tiny_model_dir, "single", grad_accum=2)
    subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(single)], check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "ddp.yaml"),
                  "--main_process_port", str(free_port())]  # fmt: skip
    runs = tmp_path / "runs"
    for name, launch in (("ddp", torchrun), ("accelerate", accelerate)):
        ddp = config(tmp_path, tiny_model_dir, name, grad_accum=1)
        done = subprocess.run(
            [*launch, "-m", "tunelab.cli", "train", str(ddp)], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]

        a = load_file(runs / "single" / "adapter" / "adapter_model.safetensors")
        b = load_file(runs / name / "adapter" / "adapter_model.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
        assert len(losses(runs / name)) == 4  # written once, by the main process
        assert losses(runs / "single") == pytest.approx(losses(runs / name), rel=1e-4)


def test_example_accelerate_config_loads() -> None:
    cluster = ClusterConfig.from_yaml_file(EXAMPLES / "ddp.yaml")
    assert cluster.num_processes == 2 and cluster.mixed_precision == "no" and cluster.distributed_type == "MULTI_GPU"
