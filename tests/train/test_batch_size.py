"""Automatic batch size: the search, the global-batch arithmetic and the CPU memory estimate, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.helpers import tiny_config
from tests.train.test_guard import items
from tunelab.config import load_config
from tunelab.core.errors import ConfigError, RunError
from tunelab.models.load import load_model
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.run import run_training
from tunelab.train.batch_size import (
    activation_bytes,
    divisors,
    largest_fitting,
    memory_estimate_fits,
    resolve_batch_size,
    split_global_batch,
    trial_step_fits,
)
from tunelab.train.config import TrainingSection
from tunelab.train.metrics import read_metrics


def test_divisors() -> None:
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(1) == [1]
    assert divisors(49) == [1, 7, 49]


def test_largest_fitting_searches_in_log_steps() -> None:
    tried: list[int] = []

    def fits(micro: int) -> bool:
        tried.append(micro)
        return micro <= 20

    assert largest_fitting(divisors(64), fits) == 16
    assert len(tried) <= 3  # 7 candidates: binary search
    assert largest_fitting([1, 2, 4], lambda m: False) is None
    assert largest_fitting([1, 2, 4], lambda m: True) == 4


def test_split_global_batch() -> None:
    assert split_global_batch(64, 2, lambda m: m <= 8) == (8, 4)  # 8 x 4 x 2 = 64
    assert split_global_batch(24, 1, lambda m: m <= 10) == (8, 3)  # 10 is no divisor of 24
    assert split_global_batch(12, 4, lambda m: True) == (3, 1)
    assert split_global_batch(7, 1, lambda m: m < 7) == (1, 7)
    with pytest.raises(ConfigError, match="multiple of 4"):
        split_global_batch(10, 4, lambda m: True)
    with pytest.raises(RunError, match="gradient_checkpointing"):
        split_global_batch(16, 1, lambda m: False)


def test_activation_bytes_by_hand() -> None:
    # 2 layers, hidden 4, 2 heads, vocabulary 10, one sequence of 4 tokens.
    # A layer in 16-bit: 4*1*4 * (34 + 5*2*4/4) = 16 * 44 = 704 bytes; logits: 3 * 4*1*4*10 = 480.
    assert activation_bytes(2, 4, 2, 10, 1, 4, bf16=True, checkpointing=False) == 2 * 704 + 480
    assert activation_bytes(2, 4, 2, 10, 1, 4, bf16=False, checkpointing=False) == 2 * 1408 + 480
    # Checkpointed: each layer keeps its 2*4*1*4 = 32-byte input, plus one layer recomputed.
    assert activation_bytes(2, 4, 2, 10, 1, 4, bf16=True, checkpointing=True) == 2 * 32 + 704 + 480
    assert activation_bytes(2, 4, 2, 10, 3, 4, bf16=True, checkpointing=False) == 3 * (2 * 704 + 480)


def test_memory_estimate_on_the_tiny_model(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    config = model.config
    sizes = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.vocab_size)
    trainable = sum(p.numel() for p in model.parameters())
    need_8 = 12 * trainable + activation_bytes(*sizes, 8, 32, bf16=False, checkpointing=False)
    fits = memory_estimate_fits(model, 32, bf16=False, checkpointing=False, available=int(2 * need_8))
    assert fits is not None
    assert fits(8) and not fits(9)
    assert memory_estimate_fits(torch.nn.Linear(2, 2), 32, False, False, available=10**9) is None


def test_resolve_on_cpu_keeps_the_global_batch(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    cfg = TrainingSection(auto_batch_size=True, global_batch_size=12, batch_size=2)
    out = resolve_batch_size(
        cfg, model, OBJECTIVES["sft"], items(), pad_id=0, accelerator=Accelerator(cpu=True), bf16=False
    )
    # The tiny model fits all 12 at once in any machine's RAM; nothing else changes.
    assert (out.batch_size, out.grad_accum, out.auto_batch_size, out.global_batch_size) == (12, 1, False, None)
    assert out.learning_rate == cfg.learning_rate
    default = resolve_batch_size(
        TrainingSection(auto_batch_size=True, batch_size=3, grad_accum=2), model, OBJECTIVES["sft"], items(),
        pad_id=0, accelerator=Accelerator(cpu=True), bf16=False,
    )  # fmt: skip
    assert default.batch_size * default.grad_accum == 6


def test_trial_step_runs_a_step_and_leaves_no_gradients(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    fits = trial_step_fits(
        model, OBJECTIVES["sft"], items(), pad_id=0, device=torch.device("cpu"), bf16=False, ctx=None
    )
    assert fits(5)
    assert all(p.grad is None for p in model.parameters())


def test_a_run_records_the_chosen_sizes(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(
        tmp_path, tiny_model_dir, "training.auto_batch_size=true", "training.global_batch_size=12",
        "training.gradient_checkpointing=true", "training.max_steps=2", "eval.generate=false", "eval.baseline=false",
    )  # fmt: skip
    run_dir = run_training(cfg).run_dir
    saved = load_config(run_dir / "config.yaml").training
    assert (saved.batch_size, saved.grad_accum, saved.auto_batch_size) == (12, 1, False)
    assert saved.gradient_checkpointing
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [2]


def test_global_batch_without_auto_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="auto_batch_size"):
        load_config(None, ["data.train=x.jsonl", "training.global_batch_size=32"])
    assert load_config(None, ["data.train=x.jsonl", "training.auto_batch_size=true"]).training.global_batch_size is None
