"""The loop skips steps whose loss or gradient norm is NaN/inf (no update, counted), stops after
`max_bad_steps` in a row with a clear message; gradient checkpointing changes memory, not the maths."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

from tests.helpers import AfterStep
from tunelab.core.errors import RunError
from tunelab.data.tokenize import IGNORE, Tokenized, collate
from tunelab.models.load import load_model
from tunelab.objectives.registry import OBJECTIVES
from tunelab.train.config import TrainingSection
from tunelab.train.loop import enable_gradient_checkpointing_, fit
from tunelab.train.metrics import read_metrics
from tunelab.train.module import TrainingModule

SFT = OBJECTIVES["sft"]


def items(n: int = 64, seed: int = 0) -> list[Tokenized]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(10, 200) for _ in range(rng.randrange(6, 14))]
        out.append(Tokenized(ids, [IGNORE] * 3 + ids[3:], origin="test"))
    return out


def poisoned(bad_calls: set[int]) -> tuple:
    """The sft objective, with a NaN loss on the given training calls (1-based: one call per step here)."""
    calls = [0]

    def loss(model, batch, ctx):
        parts = SFT.loss(model, batch, ctx)
        if model.training:
            calls[0] += 1
            if calls[0] in bad_calls:
                parts = dataclasses.replace(parts, loss_sum=parts.loss_sum * float("nan"))
        return parts

    return dataclasses.replace(SFT, loss=loss), calls


def train(tmp_path: Path, model_dir: Path, objective, steps: int, **training):
    model = load_model(str(model_dir))
    cfg = TrainingSection(max_steps=steps, batch_size=4, learning_rate=1e-3, log_every=1, precision="fp32", **training)
    snapshots: list[torch.Tensor] = []
    weight = model.model.layers[0].mlp.down_proj.weight

    def on_step(step: int) -> None:
        snapshots.append(weight.detach().clone())

    before = weight.detach().clone()
    fit(
        model, objective, items(), [], cfg, tmp_path, pad_id=0, accelerator=Accelerator(cpu=True), bf16=False,
        hooks=[AfterStep(on_step)],
    )  # fmt: skip
    return [before, *snapshots], read_metrics(tmp_path)


def test_nan_steps_are_skipped_and_counted(tmp_path: Path, tiny_model_dir: Path) -> None:
    objective, _ = poisoned({3, 6})
    weights, metrics = train(tmp_path, tiny_model_dir, objective, steps=8)
    assert [m["skipped_steps"] for m in metrics] == [0, 0, 1, 1, 1, 2, 2, 2]
    for step in range(1, 9):  # weights[step] are the weights after that step
        same = torch.equal(weights[step], weights[step - 1])
        assert same == (step in {3, 6}), f"step {step}"
    assert torch.isfinite(weights[-1]).all()


def test_nan_gradient_with_finite_loss_is_skipped(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_calls = [0]

    def loss(model, batch, ctx):
        parts = SFT.loss(model, batch, ctx)
        model_calls[0] += 1
        if model_calls[0] == 2:  # the loss stays finite; one weight's gradient turns NaN
            w = model.model.layers[1].mlp.up_proj.weight
            w.register_hook(lambda g: g * float("nan") if model_calls[0] == 2 else g)
        return parts

    weights, metrics = train(tmp_path, tiny_model_dir, dataclasses.replace(SFT, loss=loss), steps=4)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert [m["skipped_steps"] for m in metrics] == [0, 1, 1, 1]
    assert torch.equal(weights[2], weights[1]) and not torch.equal(weights[3], weights[2])


def test_too_many_bad_steps_in_a_row_stop_the_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Steps 2 and 5-7 are bad: the single one is forgiven, the third in a row stops at step 7.
    objective, calls = poisoned({2, 5, 6, 7, 8, 9})
    with pytest.raises(RunError, match=r"stopped at step 7: the last 3 steps") as info:
        train(tmp_path, tiny_model_dir, objective, steps=20, max_bad_steps=3)
    assert "4 skipped in all" in str(info.value) and "learning_rate" in str(info.value)
    assert calls[0] == 7


def lora_model(model_dir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(load_model(str(model_dir)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # B starts at zero; make it non-zero so A gets a gradient too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """The loss, the trainable gradients, and how many tensors the forward kept for the backward."""
    module = TrainingModule(model, SFT).train()
    kept = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[0] += 1
        return t

    # Checkpointed layers keep their own (few) tensors through torch's inner hooks, so this counts what stays live.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_sum, count, _ = module(collate(items(8), 0))
    (loss_sum / count).backward()
    return loss_sum.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, kept[0]


@pytest.mark.parametrize("adapter", [False, True])
def test_gradient_checkpointing_same_loss_and_grads(tiny_model_dir: Path, adapter: bool) -> None:
    build = lora_model if adapter else (lambda d: load_model(str(d)))
    plain_loss, plain, plain_kept = loss_and_grads(build(tiny_model_dir))

    model = build(tiny_model_dir)
    enable_gradient_checkpointing_(model)
    ckpt_loss, ckpt, ckpt_kept = loss_and_grads(model)
    # Without checkpointing every op of a layer keeps its inputs for the backward; with it a layer keeps its input.
    assert ckpt_kept < plain_kept / 2, (ckpt_kept, plain_kept)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for name in plain:
        assert plain[name] is not None and ckpt[name] is not None, name
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6)
