"""The fast LoRA forward gives peft's loss and gradients, keeps the parameter names, and saves an adapter peft loads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.helpers import disable_input_dtype_casting
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.methods.lora import LoraConfig, apply_
from tunelab.models.kernels.fused import fuse_modules_
from tunelab.models.kernels.lora import FastLoraLinear, use_fast_lora_

LAYERS = 2


def _base(dtype: torch.dtype = torch.float32, fused: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, max_position_embeddings=64,
    )  # fmt: skip
    model = cast(nn.Module, LlamaForCausalLM(config)).to(dtype)
    if fused:
        fuse_modules_(model)
    return model


def _lora(base: nn.Module, **settings: float) -> nn.Module:
    model = apply_(copy.deepcopy(base), LoraConfig(r=4, alpha=8, **settings))  # pyright: ignore[reportArgumentType]
    generator = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_" in name:  # B not zero, so that A's gradients are not zero either
            p.data = torch.randn(p.shape, generator=generator) * 0.2
    return model


def _loss_and_grads(model: nn.Module, ids: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    with disable_input_dtype_casting(model), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


IDS = torch.randint(0, 128, (3, 17), generator=torch.Generator().manual_seed(2))


class _LinearCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is F.linear
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [True, False], ids=["fused-mlp", "transformers-mlp"])
def test_fp32_loss_and_every_lora_gradient_equal_peft(fused: bool) -> None:
    base = _base(fused=fused)
    plain, fast = _lora(base), _lora(base)
    assert use_fast_lora_(fast) == (7 * LAYERS, 2 * LAYERS)  # q/k/v and gate/up grouped in each layer
    loss, grads = _loss_and_grads(plain, IDS)
    fast_loss, fast_grads = _loss_and_grads(fast, IDS)
    torch.testing.assert_close(fast_loss, loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == fast_grads.keys() and len(grads) == 14 * LAYERS  # A and B of 7 layers each
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_siblings_share_one_a_product() -> None:
    """Per layer peft runs 7 base, 7 A and 7 B products; fast: 7 base and 4 A (q/k/v and gate/up as one each),
    B's inside addmm. Plus the output head."""
    counts = []
    for fast in (False, True):
        model = _lora(_base())
        if fast:
            use_fast_lora_(model)
        with torch.no_grad(), _LinearCalls() as mode:
            model(input_ids=IDS)
        counts.append(mode.calls)
    assert counts == [21 * LAYERS + 1, 11 * LAYERS + 1]


class _Projections(nn.Module):
    """Three sibling projections of one input, as an attention block has them."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(64, n, bias=False) for n in (64, 32, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


def test_bf16_autocast_is_as_close_to_fp32_as_peft() -> None:
    """bf16 base under autocast: the fast layers' output and LoRA gradients are no further from the fp32
    computation (same bf16-rounded base weights) than peft's own bf16 forward is."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])
    plain = apply_(_Projections().to(torch.bfloat16), config)
    for name, p in plain.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape) * 0.2
    fast, exact = copy.deepcopy(plain), copy.deepcopy(plain).float()
    assert use_fast_lora_(fast) == (3, 1)
    x, target = torch.randn(40, 64).bfloat16(), torch.randn(40, 128)
    results = []
    for model, bf16 in ((exact, False), (plain, True), (fast, True)):
        with disable_input_dtype_casting(model), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model.get_base_model()(x if bf16 else x.float())  # pyright: ignore[reportCallIssue]
        (out.float() * target).sum().backward()
        grads = [p.grad.float() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
        results.append((out.detach().float(), grads))
    (out, grads), (peft_out, peft_grads) = results[0], results[1]
    fast_out, fast_grads = results[2]
    assert fast_out.dtype == peft_out.dtype and len(grads) == 6

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    assert 0 < error(fast_out, out) <= 1.2 * error(peft_out, out) + 1e-4
    for g, peft_g, fast_g in zip(grads, peft_grads, fast_grads, strict=True):
        assert error(fast_g, g) <= 1.2 * error(peft_g, g) + 1e-3


def test_dropout_and_disabled_adapters_run_peft_forward() -> None:
    base = _base()
    plain, fast = _lora(base, dropout=0.3), _lora(base, dropout=0.3)
    use_fast_lora_(fast)
    for model in (plain, fast):
        model.train()
    torch.manual_seed(5)
    loss = plain(input_ids=IDS, labels=IDS).loss
    torch.manual_seed(5)
    assert torch.equal(fast(input_ids=IDS, labels=IDS).loss, loss)  # the same dropout masks: peft's own forward
    with torch.no_grad(), fast.disable_adapter():  # pyright: ignore[reportCallIssue] - PeftModel's context
        off = fast(input_ids=IDS).logits
    with torch.no_grad():
        torch.testing.assert_close(off, base(input_ids=IDS).logits, rtol=0, atol=0)


def test_names_saved_adapter_and_merge_unchanged(tmp_path: Path) -> None:
    base = _base(fused=False)
    plain, fast = _lora(base), _lora(base)
    use_fast_lora_(fast)
    assert any(isinstance(m, FastLoraLinear) for m in fast.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        expected = fast(input_ids=IDS).logits
    fast.save_pretrained(str(tmp_path / "adapter"))  # pyright: ignore[reportCallIssue] - PeftModel's method
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter"))
    assert not any(isinstance(m, FastLoraLinear) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
        merged = fast.merge_and_unload()  # pyright: ignore[reportCallIssue] - PeftModel's method
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=1e-4, atol=1e-4)
