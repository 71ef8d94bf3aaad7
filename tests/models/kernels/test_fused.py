"""Fused RMSNorm and SwiGLU give the Hugging Face modules' outputs and gradients while saving fewer activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP, LlamaRMSNorm

from tunelab.models.kernels.fused import FusedGatedMLP, FusedRMSNorm, fuse_modules_
from tunelab.models.load import load_model


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of `fn()`, parameters excluded."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weight_trains", [False, True])
def test_rmsnorm_matches_the_reference(dtype: torch.dtype, weight_trains: bool) -> None:
    torch.manual_seed(0)
    ref = LlamaRMSNorm(48, eps=1e-5)
    ref.weight.data = (torch.rand(48) + 0.5).to(dtype)
    ref.weight.requires_grad_(weight_trains)
    fused = FusedRMSNorm(torch.nn.Parameter(ref.weight.detach().clone(), requires_grad=weight_trains), 1e-5)
    x = torch.randn(3, 5, 48, dtype=dtype) * 3
    grad = torch.randn(3, 5, 48, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}

    outs, grads = [], []
    for module in (ref, fused):
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(grad)
        outs.append(out)
        grads.append((xi.grad, module.weight.grad))
    assert outs[1].dtype == outs[0].dtype
    torch.testing.assert_close(outs[1], outs[0], **tol)
    torch.testing.assert_close(grads[1][0], grads[0][0], **tol)
    if weight_trains:
        torch.testing.assert_close(grads[1][1], grads[0][1], **tol)
    else:
        assert grads[1][1] is None


def test_rmsnorm_keeps_the_bf16_input_not_fp32_copies() -> None:
    x = torch.randn(64, 576, dtype=torch.bfloat16, requires_grad=True)
    ref, fused = LlamaRMSNorm(576), FusedRMSNorm(torch.nn.Parameter(torch.ones(576, dtype=torch.bfloat16)), 1e-6)
    ref.weight.data = ref.weight.data.bfloat16()
    # The reference keeps an fp32 copy of the input and a bf16 normalized copy (6 bytes a value); fused: the bf16
    # input (2 bytes a value) and one fp32 scale per row.
    assert _saved_bytes(lambda: ref(x)) >= (4 + 2) * x.numel()
    assert _saved_bytes(lambda: fused(x)) == 2 * x.numel() + 4 * 64


def test_swiglu_matches_the_reference_and_keeps_two_tensors() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, hidden_act="silu")
    ref = LlamaMLP(config)
    fused = FusedGatedMLP(ref, "silu")
    x = torch.randn(4, 7, 32)
    grad = torch.randn(4, 7, 32)
    results = []
    for module in (ref, fused):
        module.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.backward(grad)
        results.append((out, xi.grad, ref.gate_proj.weight.grad.clone(), ref.up_proj.weight.grad.clone()))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Saved: the MLP's input, gate, up and the product (input of down_proj); the reference also keeps silu(gate).
    width = 4 * 7 * 64 * 4
    assert _saved_bytes(lambda: ref(x.requires_grad_(True))) - _saved_bytes(lambda: fused(x)) == width


def test_fuse_modules_swaps_every_norm_and_mlp_and_keeps_the_logits(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    ids = torch.tensor([[5, 9, 30, 41, 7, 12]])
    before = model(ids).logits
    keys = set(model.state_dict())
    assert fuse_modules_(model) == 2 * 2 + 1 + 2  # two norms per block, the final norm, one MLP per block
    assert set(model.state_dict()) == keys
    assert isinstance(model.model.layers[1].mlp, FusedGatedMLP)
    torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
