"""The fast training path gives the loss and gradients of the plain one.

Plain: an fp32 model and the loss transformers computes itself (`labels=`, full logits at every position).
Fast (what `tunelab train` does by default on bf16 hardware): frozen base stored in bf16, fp32 LoRA weights, bf16
autocast, fused RMSNorm and SwiGLU modules, peft's per-adapter input casts disabled, the output head run only
where labels exist; and packing
several examples into one row with restarting positions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.helpers import disable_input_dtype_casting

from tests.tiny import write_color_task
from tunelab.config import load_config
from tunelab.core.device import autocast
from tunelab.data.load import load_examples
from tunelab.data.pack import pack
from tunelab.data.tokenize import IGNORE, collate, tokenize_all
from tunelab.methods.registry import METHODS
from tunelab.models.kernels.fused import fuse_modules_
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.registry import OBJECTIVES
from tunelab.train.module import TrainingModule


def _lora_model(model_dir: Path, data: Path, dtype: torch.dtype, fused: bool = False) -> torch.nn.Module:
    cfg = load_config(None, [f"data.train={data}", "method=lora", "method.r=4", "method.dropout=0"])
    model = load_model(str(model_dir), dtype=dtype)
    if fused:
        assert fuse_modules_(model) == 7
    model = METHODS["lora"].apply_(model, cfg.method)
    generator = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_" in name:  # the same A and B in every copy; B not zero, so the gradients of A are not zero too
            p.data = torch.randn(p.shape, generator=generator) * 0.1
    return model


def _lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def batch_items(tmp_path: Path, tiny_model_dir: Path):
    data = write_color_task(tmp_path / "color.jsonl", 8)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    items, rejects = tokenize_all(load_examples([data]).examples, tokenizer, 128)
    assert not rejects and len(items) == 8
    return data, items, tokenizer.pad_token_id


def test_bf16_fast_path_matches_the_plain_fp32_loss_and_gradients(tiny_model_dir: Path, batch_items) -> None:
    data, items, pad = batch_items
    batch = collate(items, pad)

    plain = _lora_model(tiny_model_dir, data, torch.float32)
    labels = batch["labels"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    reference = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    reference.backward()

    fast = _lora_model(tiny_model_dir, data, torch.bfloat16, fused=True)
    frozen = [p for p in fast.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in fast.parameters() if p.requires_grad)
    module = TrainingModule(fast, OBJECTIVES["sft"])
    with autocast(torch.device("cpu"), True), disable_input_dtype_casting(fast):
        loss_sum, count, _ = module(batch)
    loss = loss_sum / count
    loss.backward()

    assert int(count) == int((labels[:, 1:] != IGNORE).sum())
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
    want, got = _lora_grads(plain), _lora_grads(fast)
    assert want.keys() == got.keys() and len(want) == 2 * 7 * 2  # A and B of 7 linear layers in each of 2 blocks
    for name, g in got.items():
        w = want[name]
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
        assert (g.norm() - w.norm()).abs() / w.norm() < 0.05, name


def test_packed_rows_give_the_loss_and_gradients_of_the_padded_batch(tiny_model_dir: Path, batch_items) -> None:
    data, items, pad = batch_items
    packed = pack(items, 128)
    assert len(packed) < len(items)  # several examples share a row

    def loss_and_grads(rows) -> tuple[float, dict[str, torch.Tensor]]:
        model = _lora_model(tiny_model_dir, data, torch.float32)
        loss_sum, count, _ = TrainingModule(model, OBJECTIVES["sft"])(collate(rows, pad))
        (loss_sum / count).backward()
        return (loss_sum / count).item(), _lora_grads(model)

    padded_loss, padded_grads = loss_and_grads(items)
    packed_loss, packed_grads = loss_and_grads(packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, g in packed_grads.items():
        torch.testing.assert_close(g, padded_grads[name], rtol=1e-4, atol=1e-6)
