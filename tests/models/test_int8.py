"""int8 dynamic quantisation: Linear layers become int8, logits stay close, and the server can serve it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunelab.models.int8 import quantize_int8_
from tunelab.serve.engine import Handle, SequenceSpec
from tunelab.serve.sampling import SamplingParams
from tunelab.serve.server import build_state

IDS = torch.tensor([[5, 17, 42, 99, 3, 200, 11]])


def test_int8_replaces_linears_and_keeps_logits_close(tiny_model_dir: Path) -> None:
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    quantized = quantize_int8_(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    kept = [n for n, m in quantized.named_modules() if type(m) is torch.nn.Linear]
    packed = [m for m in quantized.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(packed) == 2 * 6  # q k v o gate up in each of the 2 layers
    assert kept == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    every = quantize_int8_(AutoModelForCausalLM.from_pretrained(tiny_model_dir), skip=())
    assert not [m for m in every.modules() if type(m) is torch.nn.Linear]
    with torch.no_grad():
        want, got = reference(IDS).logits, quantized(IDS).logits
    # Per-tensor int8 weights: about 1% of the weight range per value; the logits move by a few hundredths.
    torch.testing.assert_close(got, want, atol=5e-2, rtol=0)
    assert (got - want).abs().max() > 0  # it really is quantised


def test_server_generates_with_an_int8_model(tiny_model_dir: Path) -> None:
    state = build_state(str(tiny_model_dir), dtype=torch.float32, int8=True, name="tiny")

    async def ask() -> str:
        handle = Handle(asyncio.get_running_loop())
        state.engine.submit([SequenceSpec(0, [5, 17, 42], SamplingParams(max_tokens=5, temperature=0))], handle)
        while not (event := await handle.events.get()).finish_reason:
            pass
        return event.finish_reason

    try:
        assert asyncio.run(ask()) in ("stop", "length")
    finally:
        state.engine.stop()
