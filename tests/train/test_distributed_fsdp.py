"""FSDP with 2 CPU processes (gloo) under `accelerate launch --config_file examples/accelerate/fsdp.yaml`: tunelab
shards the model itself with FSDP2 (accelerate ignores FSDP on the CPU), and the run matches one process with the
same global batch (batch 4 x 2 accumulation steps = 2 processes x batch 4), for a LoRA adapter over a frozen base
and for full fine-tuning with tied embeddings. Checkpoints and the result hold full weights, written once; they
load in one process, and a run resumed from an FSDP checkpoint ends where the uninterrupted one did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.commands.config.config_args import ClusterConfig
from safetensors.torch import load_file
from torch import nn

from tests.helpers import ROOT
from tests.train.test_distributed import config as ddp_config
from tests.train.test_distributed import free_port
from tunelab.core.errors import ConfigError
from tunelab.methods.base import StepHook
from tunelab.train.checkpoint import TRAINING_STATE
from tunelab.train.distributed import check_backend, fsdp_settings, meta_copy, refuse_unsharded_state
from tunelab.train.gather import load_trainable_, optimizer_state, trainable_state
from tunelab.train.state_io import read_state

EXAMPLES = ROOT / "examples" / "accelerate"
TIMING = {"tokens_per_s", "peak_mem_mb", "elapsed_s"}


def config(tmp_path: Path, model_dir: Path, name: str, method: str, grad_accum: int) -> Path:
    schedule = "max_steps: 8, log_every: 2, save_every: 4, keep_checkpoints: 2"
    return ddp_config(tmp_path, model_dir, name, grad_accum, method=method, schedule=schedule)


def run(args: list[str], launch: bool, *options: str, ok: bool = True) -> str:
    prefix = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "fsdp.yaml"),
              "--main_process_port", str(free_port()), *options] if launch else [sys.executable]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*prefix, "-m", "tunelab.cli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done.stderr


def metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def assert_same_lines(a: list[dict], b: list[dict]) -> None:
    assert [sorted(x) for x in a] == [sorted(y) for y in b]
    for x, y in zip(a, b, strict=True):
        assert {k: float(v) for k, v in x.items()} == pytest.approx({k: float(v) for k, v in y.items()}, rel=1e-4)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def result_file(method: str) -> str:
    return "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"


def assert_trained_as_one_process(runs: Path, name: str, model_dir: Path, method: str) -> dict[str, torch.Tensor]:
    """The sharded run `name` trained (its weights moved off their start) to the weights and metric lines of the
    one-process run "single", logged once, by the main process; returns its result's weights."""
    single, sharded = (load_file(runs / r / result_file(method)) for r in ("single", name))
    assert_same(single, sharded)
    base = load_file(model_dir / "model.safetensors")
    start = {k: torch.zeros_like(v) for k, v in sharded.items() if "lora_B" in k} if method == "lora" else base
    assert sum(not torch.equal(sharded[k], start[k]) for k in start) >= len(start) // 2 > 0
    assert [m["step"] for m in metrics(runs / name) if "loss" in m] == [2, 4, 6, 8]
    assert_same_lines(metrics(runs / "single"), metrics(runs / name))
    return sharded


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_process_fsdp_matches_one_process_and_resumes(tmp_path: Path, tiny_model_dir: Path, method: str) -> None:
    runs = tmp_path / "runs"
    run(["train", str(config(tmp_path, tiny_model_dir, "single", method, grad_accum=2))], launch=False)
    run(["train", str(config(tmp_path, tiny_model_dir, "fsdp", method, grad_accum=1))], launch=True)
    weights = result_file(method)
    fsdp = assert_trained_as_one_process(runs, "fsdp", tiny_model_dir, method)
    # Full (unsharded) tensors in the checkpoints, written once.
    assert [m["step"] for m in metrics(runs / "fsdp") if m.get("final")] == [8]  # validation, on every process
    ckpts = sorted(p.name for p in (runs / "fsdp" / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000008"]
    for name in ckpts:
        assert_same(*(load_file(runs / r / "checkpoints" / name / "trainable.safetensors") for r in ("single", "fsdp")))
        files = (runs / r / "checkpoints" / name / TRAINING_STATE for r in ("single", "fsdp"))
        single_opt, fsdp_opt = (read_state(f)["optimizer"] for f in files)
        assert sorted(single_opt["state"]) == sorted(fsdp_opt["state"])
        for key, moments in single_opt["state"].items():
            torch.testing.assert_close(
                moments["exp_avg_sq"], fsdp_opt["state"][key]["exp_avg_sq"], rtol=1e-3, atol=1e-9
            )

    # The result loads in one process, like any other run's.
    if method == "lora":
        from peft import PeftModel, get_peft_model_state_dict
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), runs / "fsdp" / "adapter"
        )
        assert_same(get_peft_model_state_dict(model), fsdp)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(runs / "fsdp" / "model")
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again after gathering
        torch.testing.assert_close(model.lm_head.weight, fsdp["model.embed_tokens.weight"])

    # Resume under FSDP from the step-4 checkpoint: the same weights and metric lines as the uninterrupted run.
    done = {k: v.clone() for k, v in fsdp.items()}
    shutil.rmtree(runs / "fsdp" / "checkpoints" / "step-00000008")
    (runs / "fsdp" / weights).unlink()
    run(["train", str(runs / "fsdp"), "--resume"], launch=True)
    assert_same(done, load_file(runs / "fsdp" / weights))
    assert_same_lines(metrics(runs / "fsdp"), metrics(runs / "single"))


def test_the_launch_settings_reach_the_sharding(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Not dropped on the CPU: the layer class named in the launch is looked for in the model, and a wrong one says so.
    path = config(tmp_path, tiny_model_dir, "wrong", "lora", grad_accum=1)
    stderr = run(["train", str(path)], True, "--fsdp_transformer_layer_cls_to_wrap", "GPTBlock", ok=False)
    assert "fsdp_transformer_layer_cls_to_wrap names GPTBlock" in stderr and "LlamaDecoderLayer" in stderr
    assert "tunelab/train/" not in stderr  # a message, no traceback from tunelab (the launcher reports the exit)


def test_checkpoint_state_is_named_and_restores_in_one_process(tiny_model_dir: Path) -> None:
    # The same gathering path on a plain module: weights and optimizer state keyed by parameter name, tied
    # weights once, and a frozen parameter left out; restoring puts the values back.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False), nn.Linear(5, 5))
    model[1].weight = model[0].weight  # tied, like input and output embeddings
    model[2].bias.requires_grad_(False)
    module = nn.Module()
    module.model = model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    weights = trainable_state(module)
    assert sorted(weights) == ["0.weight", "2.weight"]
    state = optimizer_state(module, optimizer)
    assert (
        sorted(state["state"]) == ["model.0.weight", "model.2.weight"] and state["state"]["model.0.weight"]["step"] == 1
    )
    saved = {k: v.clone() for k, v in weights.items()}
    with torch.no_grad():
        model[0].weight.zero_()
    load_trainable_(module, saved)
    assert torch.equal(model[1].weight, saved["0.weight"]) and model[1].weight is model[0].weight


def test_meta_copy_holds_no_weights_and_keeps_ties(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    frame = meta_copy(model)
    assert all(p.is_meta for p in frame.parameters()) and not any(p.is_meta for p in model.parameters())
    assert frame.lm_head.weight is frame.model.embed_tokens.weight
    assert torch.equal(frame.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)  # buffers are real


def test_fsdp_settings_from_the_accelerate_environment() -> None:
    env = {"FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
    two = fsdp_settings({**env, "FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_TRANSFORMER_CLS_TO_WRAP": "A, B"})
    assert (two.wrap, two.layer_classes, two.reshard_after_forward) == ("TRANSFORMER_BASED_WRAP", ("A", "B"), False)
    assert fsdp_settings(env).reshard_after_forward and fsdp_settings(env).layer_classes == ()
    one = fsdp_settings({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "2"})  # SHARD_GRAD_OP, as a number
    assert (one.wrap, one.reshard_after_forward) == ("NO_WRAP", False)
    with pytest.raises(ConfigError, match=r"NO_SHARD.*ddp\.yaml"):
        fsdp_settings({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "NO_SHARD"})
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        fsdp_settings({"FSDP_ACTIVATION_CHECKPOINTING": "true"})


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    accelerator = Accelerator(cpu=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert check_backend(accelerator) == "none"  # one process: nothing to shard across
    # On GPUs accelerate shards; FSDP1's flattened parameters (without use_orig_params) are refused.
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    def gpus(version: int, orig: bool | None) -> SimpleNamespace:
        plugin = SimpleNamespace(fsdp_version=version, use_orig_params=orig)
        return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))

    assert check_backend(gpus(2, None)) == check_backend(gpus(1, True)) == "fsdp-accelerate"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fsdp_use_orig_params"):
        check_backend(gpus(1, False))  # type: ignore[arg-type]


def test_options_that_hold_full_weights_are_refused_under_fsdp(tiny_model_dir: Path) -> None:
    from tunelab.train.config import TrainingSection

    with pytest.raises(ConfigError, match=r"l2_penalty.*ddp\.yaml"):
        refuse_unsharded_state(TrainingSection(l2_penalty=0.1), [])
    refuse_unsharded_state(TrainingSection(), [])

    class Thaws(StepHook):  # a method that thaws weights later (gradual unfreezing) holds the full ones
        def dormant_parameters(self) -> list[nn.Parameter]:
            return [nn.Parameter(torch.zeros(1))]

    with pytest.raises(ConfigError, match="unfreeze_every"):
        refuse_unsharded_state(TrainingSection(), [Thaws()])


def test_example_fsdp_config_loads() -> None:
    cluster = ClusterConfig.from_yaml_file(EXAMPLES / "fsdp.yaml")
    assert cluster.num_processes == 2 and cluster.distributed_type == "FSDP" and cluster.mixed_precision == "no"
    assert cluster.fsdp_config["fsdp_version"] == 2
    assert cluster.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_early_stopping_restores_the_gathered_best_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    # The best weights go through the same gathering as checkpoints; after an early stop they are put back.
    from tests.helpers import AfterStep
    from tests.train.test_guard import SFT, items
    from tunelab.models.load import load_model
    from tunelab.train.config import TrainingSection
    from tunelab.train.loop import fit
    from tunelab.train.metrics import read_metrics

    model = load_model(str(tiny_model_dir))
    weight = model.model.layers[0].mlp.down_proj.weight
    seen: list[torch.Tensor] = []
    cfg = TrainingSection(max_steps=30, batch_size=4, learning_rate=0.05, eval_every=1, early_stopping_patience=2,
                          log_every=1, precision="fp32")  # fmt: skip
    result = fit(
        model, SFT, items(), items(8, seed=1), cfg, tmp_path, pad_id=0, accelerator=Accelerator(cpu=True),
        bf16=False, hooks=[AfterStep(lambda step: seen.append(weight.detach().clone()))],
    )  # fmt: skip
    assert result.stopped_early and result.model is model
    evals = [m for m in read_metrics(tmp_path) if "val_loss" in m and not m.get("final")]
    best = min(evals, key=lambda m: m["val_loss"])
    assert best["step"] < result.steps and result.best_val_loss == best["val_loss"]
    torch.testing.assert_close(weight, seen[best["step"] - 1], rtol=0, atol=0)
    assert not torch.equal(weight, seen[-1])
    saved = load_file(tmp_path / "checkpoints" / "best.safetensors")
    assert torch.equal(saved["model.layers.0.mlp.down_proj.weight"], weight)
