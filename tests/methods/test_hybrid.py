"""Hybrid methods: hand-computed counts for combined parts, refusal of combinations that cannot work, and a
LoRA + full top layer + adapters run that reloads to identical logits from plain, standard files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_config
from tests.methods.test_methods import LAYER
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.methods.base import trainable_parameters
from tunelab.methods.registry import METHODS
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model
from tunelab.recipes.run import run_training

LORA_QV = 2 * 4 * ((48 + 48) + (48 + 24))  # r=4 on q (48->48) and v (48->24) in 2 layers: 1,344
NORMS_OUTSIDE_TOP = 2 * 48 + 48  # layer 0's two RMSNorms and the final norm: 144
ADAPTER_MLP_8 = 2 * (48 * 8 + 8 + 8 * 48 + 48)  # one bottleneck after each MLP: 1,648
PARTS = ["method=hybrid", "method.lora.r=4", "method.lora.target_modules=[q_proj,v_proj]", "method.top_k_layers=1"]


def _cfg(*overrides: str):
    return load_config(None, ["data.train=x.jsonl", *overrides]).method


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (PARTS, LORA_QV + LAYER),
        ([*PARTS, "method.modules=[norm]"], LORA_QV + LAYER + NORMS_OUTSIDE_TOP),
        ([*PARTS, "method.adapter.bottleneck=8", "method.adapter.after=[mlp]"], LORA_QV + LAYER + ADAPTER_MLP_8),
        (["method=hybrid", "method.adapter.bottleneck=8", "method.adapter.after=[mlp]", "method.modules=[norm]"],
         ADAPTER_MLP_8 + 2 * NORMS_OUTSIDE_TOP - 48),
    ],
)  # fmt: skip
def test_trainable_counts(tiny_model_dir: Path, overrides: list[str], expected: int) -> None:
    model = METHODS["hybrid"].apply_(load_model(str(tiny_model_dir)), _cfg(*overrides))
    assert trainable_parameters(model)[0] == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=hybrid", "method.lora.r=4"], "a hybrid needs at least two of"),
        ([*PARTS, "method.prefix.num_virtual_tokens=4"], "cannot include 'prefix': prefix tuning lives in peft's"),
        ([*PARTS, "method.ia3.target_modules=[k_proj]"], "cannot include 'ia3'"),
    ],
)
def test_uncombinable_configs_say_why(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(*overrides)


def test_pissa_cannot_share_a_weight_with_full_training(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"init=pissa moves part of each adapted weight.*model.layers.1.self_attn"):
        METHODS["hybrid"].apply_(load_model(str(tiny_model_dir)), _cfg(*PARTS, "method.lora.init=pissa"))
    fine = _cfg("method=hybrid", "method.lora.r=4", "method.lora.init=pissa", "method.modules=[norm]")
    assert trainable_parameters(METHODS["hybrid"].apply_(load_model(str(tiny_model_dir)), fine))[0] > 0


def test_lora_full_layer_and_adapters_train_and_reload(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, *PARTS, "method.adapter.bottleneck=8", "method.adapter.after=[mlp]",
                      "eval.generate=false")  # fmt: skip
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.5
    saved = result.run_dir / "adapter"
    lora_names = set(load_file(saved / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in lora_names, "plain PEFT names"
    full = load_file(saved / "full_weights.safetensors")
    assert sum(t.numel() for t in full.values()) == LAYER
    assert "model.layers.1.self_attn.q_proj.weight" in full
    model, tokenizer = load_trained(str(result.run_dir))
    ids = tokenizer("what is color of cat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, result.model(ids).logits)
