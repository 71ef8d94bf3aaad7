"""Matrix-product causal attention for short rows gives SDPA's outputs and gradients, keeps no more for the backward
than the flash kernel, and hands everything it does not handle (masks, caches, long rows) to SDPA unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from tests.models.kernels.test_fused import _saved_bytes
from tunelab.models.kernels import attention
from tunelab.models.kernels.attention import MAX_TOKENS, NAME, causal_attention, use_short_attention_
from tunelab.models.load import load_model


def _qkv(batch: int, length: int, dtype: torch.dtype, heads: int = 9, kv: int = 3, size: int = 16):
    torch.manual_seed(0)
    # Queries arrive transposed from [B, T, H, D], as the attention modules hand them over.
    q = torch.randn(batch, length, heads, size, dtype=dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(batch, kv, length, size, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv, length, size, dtype=dtype, requires_grad=True)
    return q, k, v


def _run(fn, q, k, v):
    out = fn(q, k, v)
    grads = torch.autograd.grad((out.float() * torch.linspace(-1, 1, out.shape[-1])).sum(), (q, k, v))
    return out, grads


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def test_causal_attention_matches_sdpa_in_fp32_with_grouped_heads() -> None:
    q, k, v = _qkv(3, 37, torch.float32)
    ours, ours_grads = _run(lambda *t: causal_attention(*t, q.shape[-1] ** -0.5), q, k, v)
    ref, ref_grads = _run(_sdpa, q, k, v)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_causal_attention_in_bf16_stays_within_bf16_error_of_fp32() -> None:
    q, k, v = _qkv(2, 64, torch.bfloat16)
    ours, ours_grads = _run(lambda *t: causal_attention(*t, 0.25), q, k, v)
    ref, ref_grads = _run(_sdpa, *(t.detach().float().requires_grad_() for t in (q, k, v)))
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref, rtol=0.02, atol=0.02)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        assert a.dtype == torch.bfloat16
        assert F.cosine_similarity(a.float().flatten(), b.flatten(), dim=0) > 0.999


def test_fp32_queries_beside_bf16_values_under_autocast_run_both_passes() -> None:
    """A fully trained model under bf16 autocast: the rotary embedding hands over fp32 queries and keys beside
    bf16 values. Both passes run in bf16 (as SDPA under autocast) and each gradient has its input's dtype."""
    q, k, _ = _qkv(2, 40, torch.float32)
    v = _qkv(2, 40, torch.bfloat16)[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ours_grads = _run(lambda *t: causal_attention(*t, 0.25), q, k, v)
    ref, ref_grads = _run(_sdpa, *(t.detach().float().requires_grad_() for t in (q, k, v)))
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref, rtol=0.03, atol=0.03)
    for grad, tensor, want in zip(ours_grads, (q, k, v), ref_grads, strict=True):
        assert grad.dtype == tensor.dtype
        assert F.cosine_similarity(grad.float().flatten(), want.flatten(), dim=0) > 0.999


def test_keeps_no_more_for_the_backward_than_the_flash_kernel() -> None:
    q, k, v = _qkv(8, 90, torch.bfloat16, size=64)
    ours = _saved_bytes(lambda: causal_attention(q, k, v, 0.125))
    flash = _saved_bytes(lambda: _sdpa(q, k, v))
    assert ours == (q.numel() + k.numel() + v.numel()) * 2  # queries (stacked per key/value head), keys, values
    assert ours <= flash


def test_a_model_on_it_gives_sdpa_logits_gradients_and_generations(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(attention, "causal_attention", lambda *a: calls.append(a[0].shape) or causal_attention(*a))
    ref, model = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    assert use_short_attention_(model) and model.config._attn_implementation == NAME
    torch.manual_seed(0)
    ids = torch.randint(3, 60, (3, 12))
    left_padded = torch.ones_like(ids)
    left_padded[0, :4] = 0
    long_ids = torch.randint(3, 60, (1, MAX_TOKENS + 5))
    cases = {2: {"input_ids": ids}, 0: {"input_ids": ids, "attention_mask": left_padded}}
    for layers_run, inputs in [*cases.items(), (0, {"input_ids": long_ids})]:
        calls.clear()
        outputs = []
        for m in (ref, model):
            m.zero_grad()
            logits = m(**inputs, use_cache=False).logits
            logits.logsumexp(-1).mean().backward()
            outputs.append((logits, [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        (a, grads_a), (b, grads_b) = outputs
        assert len(calls) == layers_run  # each layer of the short unmasked rows; masks and long rows go to SDPA
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for x, y in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        prompt = ids[:1, :5]
        assert torch.equal(
            model.generate(prompt, max_new_tokens=6, do_sample=False),
            ref.generate(prompt, max_new_tokens=6, do_sample=False),
        )
    # The choice is the training process's own: a saved model names no tunelab attention.
    model.save_pretrained(tmp_path / "saved")
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "llama"


def test_only_listed_decoders_on_sdpa_switch(tiny_model_dir: Path) -> None:
    eager = load_model(str(tiny_model_dir))
    eager.config._attn_implementation = "eager"
    assert not use_short_attention_(eager)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    assert not use_short_attention_(bert)
