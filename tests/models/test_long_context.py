"""Long rows: the next-token loss in chunks (same sums and gradients, never the whole logits) and RoPE scaling
(each kind's maths, every rotary family, the errors, and a run past the model's context that reloads as trained)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel

from tests.helpers import tiny_config
from tests.tiny_families import CONFIGS, ENCODERS, build_family
from tests.tiny_families import tiny_config as family_config
from tunelab.cli.main import main as cli_main
from tunelab.config import dump_config
from tunelab.core.errors import ConfigError
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model
from tunelab.models.rope import RopeScaling, context_length, scale_rope_
from tunelab.objectives.lm import LMContext, causal_lm_loss
from tunelab.recipes.run import run_training

DECODERS = [name for name in CONFIGS if name not in ENCODERS]
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _loss_and_grads(model: torch.nn.Module, batch: dict, ctx: LMContext, vocab: int):
    """The loss parts, every trainable gradient, and the largest tensor with a vocabulary-sized last dimension that
    autograd kept for the backward pass (the logits, when they are kept whole)."""
    model.zero_grad()
    kept = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 1 and t.shape[-1] == vocab:
            kept[0] = max(kept[0], t.numel() // vocab)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        parts = causal_lm_loss(model, batch, ctx)
    parts.loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return parts, grads, kept[0]


def test_chunked_loss_matches_the_one_piece_loss_and_never_keeps_the_whole_logits(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).train()
    vocab = model.config.vocab_size
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (2, 90))
    labels = ids.clone()
    labels[0, :20] = -100  # a prompt that is not scored
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    whole, whole_grads, whole_kept = _loss_and_grads(model, batch, LMContext(0.1, 0), vocab)
    chunked, chunked_grads, chunked_kept = _loss_and_grads(model, batch, LMContext(0.1, 16), vocab)
    targets = int(whole.count)
    assert targets == 2 * 89 - 19  # targets are labels[:, 1:]
    torch.testing.assert_close(chunked.loss_sum, whole.loss_sum, rtol=1e-5, atol=1e-4)
    assert int(chunked.correct) == int(whole.correct) and int(chunked.count) == targets
    assert chunked_grads.keys() == whole_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert whole_kept >= targets  # the one-piece loss keeps targets x vocab logits for backward
    assert chunked_kept == 0  # chunks recompute theirs in backward: none is kept
    with torch.no_grad():  # evaluation: chunked too, no recomputation needed
        model.eval()
        torch.testing.assert_close(
            causal_lm_loss(model, batch, LMContext(0, 16)).loss_sum, causal_lm_loss(model, batch).loss_sum
        )


def _rotary(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding"))


def test_each_kind_of_scaling_does_its_own_maths() -> None:
    config = family_config("llama", 100, SPECIAL)  # max_position_embeddings 256
    x = torch.zeros(1, 1, 8)

    def scaled(kind: str, factor: float) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
        return scale_rope_(model, RopeScaling(type=kind, factor=factor))  # type: ignore[arg-type]

    cos, _ = _rotary(AutoModelForCausalLM.from_config(copy.deepcopy(config)))(x, torch.arange(8)[None])
    linear = scaled("linear", 2)
    scaled_cos, _ = _rotary(linear)(x, torch.arange(0, 16, 2)[None])
    torch.testing.assert_close(scaled_cos, cos)  # linear: position p reads as p / factor
    assert context_length(linear.config) == 512 and linear.config.max_position_embeddings == 512
    dynamic = scaled("dynamic", 4)
    assert context_length(dynamic.config) == 1024 and dynamic.config.max_position_embeddings == 256
    yarn = scaled("yarn", 2)
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == 256
    yarn_cos, _ = _rotary(yarn)(x, torch.arange(8)[None])
    assert _rotary(yarn).attention_scaling > 1  # yarn's attention temperature
    assert not torch.allclose(yarn_cos, cos)


@pytest.mark.parametrize("family", DECODERS)
def test_every_rotary_family_scales(family: str) -> None:
    """Dynamic NTK leaves rows within the original context exactly as they were; each kind runs a row past it."""
    config = family_config(family, 100, SPECIAL)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    state = model.state_dict()
    short, long = torch.randint(3, 100, (1, 24)), torch.randint(3, 100, (1, config.max_position_embeddings + 40))
    with torch.no_grad():
        before = model(short).logits
        for kind in ("linear", "dynamic", "yarn"):
            scaled = AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
            scaled.load_state_dict(state)
            scale_rope_(scaled, RopeScaling(type=kind, factor=2))
            assert context_length(scaled.config) == 2 * config.max_position_embeddings
            if kind == "dynamic":
                torch.testing.assert_close(scaled(short).logits, before, rtol=0, atol=0)
            assert torch.isfinite(scaled(long).logits).all()


def test_scaling_what_cannot_be_scaled_is_refused() -> None:
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ConfigError, match="no rotary position embeddings"):
        scale_rope_(bert, RopeScaling(type="linear", factor=2))
    llama = AutoModelForCausalLM.from_config(family_config("llama", 100, SPECIAL))
    scale_rope_(llama, RopeScaling(type="yarn", factor=2))
    with pytest.raises(ConfigError, match="already uses 'yarn' RoPE scaling"):
        scale_rope_(llama, RopeScaling(type="linear", factor=2))
    with pytest.raises(ValueError, match="factor"):
        RopeScaling(type="linear", factor=1)


def test_a_run_past_the_model_context_trains_with_scaling_and_reloads_with_it(tmp_path: Path, capsys) -> None:
    short = build_family("llama", tmp_path / "short")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 12}))
    plain = tmp_path / "plain.yaml"
    plain.write_text(dump_config(tiny_config(tmp_path, short, "training.epochs=1", "data.max_length=64")))
    assert cli_main(["train", str(plain)]) == 2
    assert "model.rope_scaling" in " ".join(capsys.readouterr().err.split())

    cfg = tiny_config(tmp_path, short, "training.max_steps=2", "data.max_length=64", "eval.generate=false",
                      "model.rope_scaling={type: yarn, factor: 6}", name="scaled")  # fmt: skip
    result = run_training(cfg)
    assert result.final["steps"] == 2
    reloaded, _ = load_trained(str(result.run_dir))
    assert reloaded.config.rope_parameters["rope_type"] == "yarn" and context_length(reloaded.config) == 72
    ids = torch.randint(3, 100, (1, 60))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, result.model(ids).logits)
