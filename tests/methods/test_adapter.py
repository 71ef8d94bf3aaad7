"""Bottleneck adapters: hand-computed counts, identity at the start, training, save -> load identical logits,
generation through the wrapped layers, and BERT-style encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from tests.helpers import tiny_config
from tests.methods.test_methods import TOTAL
from tunelab.core.errors import ConfigError
from tunelab.methods.adapter import load_
from tunelab.methods.base import trainable_parameters
from tunelab.methods.registry import METHOD_CONFIGS, METHODS
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model
from tunelab.recipes.run import run_training

ONE = 48 * 8 + 8 + 8 * 48 + 48  # down 48->8 with bias, up 8->48 with bias: 824


def _adapt(model: torch.nn.Module, **fields) -> torch.nn.Module:
    return METHODS["adapter"].apply_(model, METHOD_CONFIGS["adapter"](**fields))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"bottleneck": 8}, 2 * 2 * ONE),  # Houlsby: after attention and MLP, in both layers
        ({"bottleneck": 8, "after": ["mlp"]}, 2 * ONE),  # Pfeiffer
        ({"bottleneck": 8, "layers": [-1]}, 2 * ONE),
        ({"bottleneck": 2, "after": ["attention"], "layers": [0]}, 48 * 2 + 2 + 2 * 48 + 48),
    ],
)
def test_trainable_counts(tiny_model_dir: Path, fields: dict, expected: int) -> None:
    model = _adapt(load_model(str(tiny_model_dir)), **fields)
    assert trainable_parameters(model) == (expected, TOTAL + expected)


def test_starts_as_the_base_model_and_generates(tiny_model_dir: Path) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    base = load_model(str(tiny_model_dir))
    model = _adapt(load_model(str(tiny_model_dir)), bottleneck=8)
    torch.testing.assert_close(model(ids).logits, base(ids).logits)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    assert not torch.allclose(model(ids).logits, base(ids).logits, atol=1e-3)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_bad_choices(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="the model has 2 layers"):
        _adapt(load_model(str(tiny_model_dir)), layers=[5])
    with pytest.raises(ValueError, match="list attention and/or mlp once each"):
        METHOD_CONFIGS["adapter"](after=[])


def test_train_lowers_loss_and_adapters_reload(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, "method=adapter", "method.bottleneck=8", "eval.generate=false")
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.5
    saved = result.run_dir / "adapter"
    assert sorted(p.name for p in saved.glob("bottleneck_*")) == ["bottleneck_adapters.safetensors",
                                                                    "bottleneck_config.json"]  # fmt: skip
    model, tokenizer = load_trained(str(result.run_dir))
    ids = tokenizer("what is color of cat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, result.model(ids).logits)
    assert trainable_parameters(model)[0] == 0, "loaded for inference: frozen"
    with pytest.raises(ConfigError, match="which this model does not have"):
        load_(torch.nn.Linear(2, 2), saved)


def test_encoder_layers_get_adapters_after_their_output_projections() -> None:
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)  # fmt: skip
    torch.manual_seed(0)
    base = BertModel(config).eval()
    torch.manual_seed(0)  # the same random base again, then adapted
    model = _adapt(BertModel(config).eval(), bottleneck=4)
    per_adapter = 32 * 4 + 4 + 4 * 32 + 32
    assert trainable_parameters(model)[0] == 2 * 2 * per_adapter
    names = {n.rsplit(".adapter.", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {
        f"encoder.layer.{i}.{where}" for i in (0, 1) for where in ("attention.output.dense", "output.dense")
    }
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model(ids).last_hidden_state, base(ids).last_hidden_state)
