"""Per family, each fused module gives the reference module's outputs and gradients, in fp32 and in bf16.

The modules are taken from a tiny model built from the family's own config class: its RMSNorms (the q/k norms
too, for Qwen3, Gemma 3 and OLMo 2) and its gated MLP (Gemma's GeGLU, Phi-3's merged gate_up). Norm weights are
random around 1 (Gemma's around 0, as its `1 + w` stores them), so a wrong offset or cast shows. The short-row
attention runs in every layer of each family that takes it (logits and gradients against SDPA's are checked in
the matrix's whole-model test), and a sliding window shorter than the row is left to SDPA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from tests.tiny_families import tiny_config
from tunelab.models.families import FAMILIES
from tunelab.models.kernels import attention
from tunelab.models.kernels.attention import causal_attention, use_short_attention_
from tunelab.models.kernels.fused import NORM_STYLES, FusedGatedMLP, FusedMergedGatedMLP, FusedRMSNorm, _fused

FUSED = [t for t, f in FAMILIES.items() if f.fast_path and set(f.fast_path) != {"attention"}]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}


def _modules(model_type: str) -> list[tuple[str, nn.Module]]:
    """The family's norm and MLP modules the fast path replaces, one of each class."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, 300, {"pad_token_id": 0}))
    seen: dict[tuple[str, str], tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if _fused(module) is not None:
            seen.setdefault((name.rsplit(".", 1)[-1], type(module).__name__), (name, module))
    return list(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", FUSED)
def test_fused_modules_match_the_reference(model_type: str, dtype: torch.dtype) -> None:
    modules = _modules(model_type)
    kinds = {type(_fused(m)) for _, m in modules}
    assert FusedRMSNorm in kinds and ("mlp" not in FAMILIES[model_type].fast_path or kinds - {FusedRMSNorm})
    for name, reference in modules:
        reference = copy.deepcopy(reference).to(dtype)
        with torch.no_grad():
            for p in reference.parameters():
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.2))
            style = NORM_STYLES.get(type(reference).__name__)
            if style is not None and style.offset == 0:
                reference.get_parameter("weight").add_(1.0)
        fused = _fused(copy.deepcopy(reference))
        assert fused is not None
        width = next(p for p in reference.parameters()).shape[-1]
        x = torch.randn(3, 7, width, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2
        grad = torch.randn(3, 7, width, dtype=dtype, generator=torch.Generator().manual_seed(2))
        results = []
        for module in (reference, fused):
            xi = x.clone().requires_grad_(True)
            out = module(xi)
            out.backward(grad)
            results.append((out, xi.grad, {n: p.grad for n, p in module.named_parameters()}))
        (want, want_dx, want_dw), (got, got_dx, got_dw) = results
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, **TOLERANCE[dtype], msg=f"{model_type} {name} output")
        torch.testing.assert_close(got_dx, want_dx, **TOLERANCE[dtype], msg=f"{model_type} {name} input grad")
        for param, g in want_dw.items():
            torch.testing.assert_close(got_dw[param], g, **TOLERANCE[dtype], msg=f"{model_type} {name}.{param}")


def test_each_family_swaps_the_mlp_it_declares() -> None:
    for model_type in FUSED:
        mlps = {type(_fused(m)) for _, m in _modules(model_type)} - {FusedRMSNorm}
        declared = "mlp" in FAMILIES[model_type].fast_path
        assert bool(mlps) == declared, model_type
        if declared:
            assert mlps == ({FusedMergedGatedMLP} if model_type == "phi3" else {FusedGatedMLP}), model_type


ATTENTION = [t for t, f in FAMILIES.items() if "attention" in f.fast_path]


@pytest.mark.parametrize("model_type", ATTENTION)
def test_short_rows_run_the_matrix_attention_in_every_layer(model_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(attention, "causal_attention", lambda *a: calls.append(1) or causal_attention(*a))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, 300, {"pad_token_id": 0}))
    assert use_short_attention_(model)
    model(input_ids=torch.randint(3, 250, (2, 20)))
    assert len(calls) == model.config.num_hidden_layers


def test_a_window_shorter_than_the_row_goes_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(attention, "causal_attention", lambda *a: calls.append(1) or causal_attention(*a))
    torch.manual_seed(0)
    config = tiny_config("mistral", 300, {"pad_token_id": 0})
    config.sliding_window = 8
    reference = AutoModelForCausalLM.from_config(config).eval()
    windowed = copy.deepcopy(reference)
    assert use_short_attention_(windowed)
    ids = torch.randint(3, 250, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(windowed(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert not calls, "a row of 20 tokens under a window of 8 is SDPA's (with its window mask)"
