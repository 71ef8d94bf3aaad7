"""Each method on the tiny model: trainable counts equal hand-computed numbers, training lowers the loss,
and the saved result loads back to identical logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from tunelab.methods.base import trainable_parameters
from tunelab.methods.registry import METHODS
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model
from tunelab.recipes.run import run_training

# Tiny Llama: hidden 48, MLP 96, 2 layers, 4 query heads and 2 key/value heads of 12 dims, vocab 300, tied head.
#   q, o: 48x48   k, v: 48x24   gate, up: 48x96   down: 96x48   two RMSNorms of 48 per layer
LAYER = 2 * 48 * 48 + 2 * 48 * 24 + 3 * 48 * 96 + 2 * 48  # 20,832
TOTAL = 300 * 48 + 2 * LAYER + 48  # embeddings (shared with the head) + layers + final norm = 56,112
LORA_R4 = 2 * 4 * ((48 + 48) * 2 + (48 + 24) * 2 + (48 + 96) * 3)  # r * (in + out) per linear: 6,144


@pytest.mark.parametrize(
    ("method", "overrides", "expected"),
    [
        ("full", [], TOTAL),
        ("freeze", ["method.top_k_layers=1"], LAYER),
        ("freeze", ["method.top_k_layers=0", "method.modules=[norm.weight$]"], 48 * 5),
        ("lora", ["method.r=4"], LORA_R4),
        ("lora", ["method.r=4", "method.target_modules=[q_proj,v_proj]"], 2 * 4 * ((48 + 48) + (48 + 24))),
    ],
)
def test_trainable_counts(tmp_path: Path, tiny_model_dir: Path, method: str, overrides: list, expected: int) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, f"method={method}", *overrides)
    model = METHODS[method].apply_(load_model(str(tiny_model_dir)), cfg.method)
    trainable, total = trainable_parameters(model)
    assert trainable == expected
    assert total == TOTAL + (expected if method == "lora" else 0)


@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_train_lowers_loss_and_saved_result_reloads(tmp_path: Path, tiny_model_dir: Path, method: str) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, f"method={method}", "eval.generate=false")
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.5
    model, tokenizer = load_trained(str(result.run_dir))
    ids = tokenizer("what is color of cat", return_tensors="pt")["input_ids"]
    reloaded = model(ids).logits
    torch.testing.assert_close(reloaded, result.model(ids).logits)
    base = load_model(str(tiny_model_dir))(ids).logits
    assert not torch.allclose(base, reloaded, atol=1e-3), "the trained result must differ from the base"
