"""DeepSpeed ZeRO with 2 CPU processes (gloo) under `accelerate launch --config_file
examples/accelerate/deepspeed.yaml`: tunelab builds the engine itself (accelerate drops DeepSpeed on the CPU), and
the run matches one process with the same global batch (batch 4 x 2 accumulation steps = 2 processes x batch 4) at
ZeRO stages 2 and 3, for a LoRA adapter and for full fine-tuning with tied embeddings. The result holds full
weights, written once; a run resumed from a ZeRO checkpoint ends where the uninterrupted one did."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from safetensors.torch import load_file

from tests.helpers import ROOT
from tests.train.test_distributed import config as ddp_config
from tests.train.test_distributed import free_port
from tests.train.test_distributed_fsdp import (
    assert_same,
    assert_same_lines,
    assert_trained_as_one_process,
    metrics,
    result_file,
)
from tunelab.core.errors import ConfigError
from tunelab.train.config import TrainingSection
from tunelab.train.zero import ENGINE_DIR, engine_config

pytest.importorskip("deepspeed")
EXAMPLES = ROOT / "examples" / "accelerate"


def config(tmp_path: Path, model_dir: Path, name: str, method: str, grad_accum: int) -> Path:
    schedule = "max_steps: 8, log_every: 2, save_every: 4, keep_checkpoints: 2"
    return ddp_config(tmp_path, model_dir, name, grad_accum, method=method, schedule=schedule)


def run(args: list[str], stage: int | None, *options: str, ok: bool = True) -> str:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "deepspeed.yaml"),
              "--main_process_port", str(free_port()), "--zero_stage", str(stage), *options]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = launch if stage is not None else [sys.executable]
    done = subprocess.run([*prefix, "-m", "tunelab.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done.stderr


@pytest.mark.parametrize(("stage", "method"), [(2, "lora"), (3, "lora"), (3, "full")])
def test_two_process_zero_matches_one_process_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, stage: int, method: str
) -> None:
    runs = tmp_path / "runs"
    run(["train", str(config(tmp_path, tiny_model_dir, "single", method, grad_accum=2))], None)
    run(["train", str(config(tmp_path, tiny_model_dir, "zero", method, grad_accum=1))], stage)
    weights = result_file(method)
    # Written once, by the main process; the logged loss, gradient norm (the engine's) and validation agree.
    zero = assert_trained_as_one_process(runs, "zero", tiny_model_dir, method)
    ckpts = sorted(p.name for p in (runs / "zero" / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000008"]
    for name in ckpts:
        folder = runs / "zero" / "checkpoints" / name
        assert_same(load_file(runs / "single" / "checkpoints" / name / "trainable.safetensors"),
                    load_file(folder / "trainable.safetensors"))  # fmt: skip
        shards = list((folder / ENGINE_DIR).rglob("*optim_states.pt"))
        assert len(shards) == 2  # each process wrote its part of the optimizer state
    if method == "full":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(runs / "zero" / "model")
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again after gathering

    # Resume under the same launch from the step-4 checkpoint: the same weights and metric lines.
    done = {k: v.clone() for k, v in zero.items()}
    shutil.rmtree(runs / "zero" / "checkpoints" / "step-00000008")
    (runs / "zero" / weights).unlink()
    run(["train", str(runs / "zero"), "--resume"], stage)
    assert_same(done, load_file(runs / "zero" / weights))
    assert_same_lines(metrics(runs / "zero"), metrics(runs / "single"))

    # Without DeepSpeed the sharded optimizer state cannot be read: a message, not a traceback.
    stderr = run(["train", str(runs / "zero"), "--resume"], None, ok=False)
    assert "written under DeepSpeed" in stderr and "Traceback" not in stderr


def test_learned_task_weights_train_inside_the_engine(tmp_path: Path, tiny_model_dir: Path) -> None:
    # The uncertainty s_t are a module of the training module, so the engine holds, reduces and steps them as it
    # does the model's weights: the 2-process ZeRO-2 run logs the s_t of the one-process run.
    schedule = "max_steps: 6, log_every: 2, task_weighting: uncertainty"
    runs = tmp_path / "runs"
    for name, accum, stage in (("single", 2, None), ("zero", 1, 2)):
        path = ddp_config(tmp_path, tiny_model_dir, name, accum, schedule=schedule)
        run(["train", str(path)], stage)
    single, zero = metrics(runs / "single"), metrics(runs / "zero")
    assert_same_lines(single, zero)
    learned = [m["task_log_var/color"] for m in zero if "loss" in m]
    assert len(learned) == 3 and abs(learned[-1]) > 1e-4, "the s_t trained"


def test_engine_config_fills_from_the_run_and_refuses_contradictions() -> None:
    cfg = TrainingSection(batch_size=4, grad_accum=3, max_grad_norm=0.5)
    launched = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"},
        "bf16": {"enabled": "auto"},
    }
    out = engine_config(launched, cfg, world_size=2)
    assert out["train_micro_batch_size_per_gpu"] == 4 and out["gradient_accumulation_steps"] == 3
    assert out["train_batch_size"] == 24 and out["gradient_clipping"] == 0.5
    assert out["zero_optimization"] == {"stage": 3}  # `auto` sizes left to DeepSpeed's defaults
    assert out["bf16"] == {"enabled": False} and out["managed_gradient_accumulation"] is False
    assert launched["zero_optimization"]["reduce_bucket_size"] == "auto"  # the launch's own dict is not changed

    refused = {
        "gradient_accumulation_steps": (4, "training.grad_accum"),
        "gradient_clipping": (1.0, "training.max_grad_norm"),
        "optimizer": ({"type": "Adam"}, "training.optimizer"),
        "scheduler": ({"type": "WarmupLR"}, "training.scheduler"),
        "bf16": ({"enabled": True}, "training.precision"),
    }
    for key, (value, named) in refused.items():
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            engine_config({**launched, key: value}, cfg, world_size=2)
    for zero, named in (({"stage": 0}, "ddp.yaml"), ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, "none")):
        with pytest.raises(ConfigError, match=named):
            engine_config({**launched, "zero_optimization": zero}, cfg, world_size=2)


def test_a_contradicting_launch_stops_with_a_message(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = config(tmp_path, tiny_model_dir, "contradiction", "lora", grad_accum=1)
    stderr = run(["train", str(path)], 2, "--gradient_accumulation_steps", "4", ok=False)
    assert "gradient_accumulation_steps=4" in stderr and "training.grad_accum is 1" in stderr
    assert "tunelab/train/" not in stderr  # a message, no traceback from tunelab (the launcher reports the exit)


def test_example_deepspeed_config_loads() -> None:
    cluster = ClusterConfig.from_yaml_file(EXAMPLES / "deepspeed.yaml")
    assert cluster.distributed_type == "DEEPSPEED" and cluster.mixed_precision == "no"
    assert cluster.deepspeed_config["zero_stage"] == 3


STEP_SCRIPT = """
import os, torch
from torch import nn
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
torch.distributed.init_process_group("gloo")
from tunelab.config import TrainingSection
from tunelab.train import zero

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4).requires_grad_(False), nn.Linear(4, 1))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
config = {{"zero_optimization": {{"stage": {stage}}}}}
engine = zero.build_engine(model, optimizer, zero.engine_config(config, TrainingSection(batch_size=2), 1))
before = model[1].weight.detach().clone()
for poison in (float("nan"), 1.0):
    for _ in range(2):  # two pieces in one step, each only adding to the gradients
        zero.EngineSteps(engine).backward(engine(torch.full((2, 4), poison)).sum())
    norm, taken = zero.EngineSteps(engine).step()
    print(poison, float(norm), taken, torch.equal(model[1].weight.detach(), before))
"""


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_engine_skips_a_non_finite_step_and_takes_a_finite_one(stage: int) -> None:
    script = STEP_SCRIPT.format(port=free_port(), stage=stage)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nan_step, good_step = done.stdout.splitlines()[-2:]
    _, norm, taken, unchanged = nan_step.split()
    assert not math.isfinite(float(norm)) and taken == "False" and unchanged == "True"  # skipped: weights untouched
    _, norm, taken, unchanged = good_step.split()
    assert math.isfinite(float(norm)) and float(norm) > 0 and taken == "True" and unchanged == "False"
