"""Layer-wise training: which layers train (hand-computed counts), gradual unfreezing on the loop's step counter,
and a layer-wise run through the real loop with other optimizer/schedule choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from tests.methods.test_methods import LAYER
from tunelab.core.errors import ConfigError
from tunelab.methods.base import trainable_parameters
from tunelab.methods.registry import METHOD_CONFIGS, METHODS
from tunelab.methods.trained import load_trained
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.lm import causal_lm_loss
from tunelab.recipes.run import run_training
from tunelab.train.config import TrainingSection
from tunelab.train.optim import Trainable, build_optimizer, param_groups

ATTENTION = 2 * (2 * 48 * 48 + 2 * 48 * 24)  # q, o: 48x48; k, v: 48x24; two layers: 13,824


def _freeze(model_dir: Path, **fields):
    return METHODS["freeze"].apply_(load_model(str(model_dir)), METHOD_CONFIGS["freeze"](**fields))


def _freeze_with_schedule(model_dir: Path, **fields):
    """The model as `apply_` leaves it, and the step hooks the method gives the loop for it."""
    cfg = METHOD_CONFIGS["freeze"](**fields)
    model = METHODS["freeze"].apply_(load_model(str(model_dir)), cfg)
    return model, METHODS["freeze"].step_hooks(model, cfg)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"bottom_k_layers": 1}, LAYER),
        ({"layers": [0, -1]}, 2 * LAYER),
        ({"layers": [-1], "bottom_k_layers": 1}, 2 * LAYER),
        ({"top_k_layers": 0, "modules": ["self_attn"]}, ATTENTION),
        ({"top_k_layers": 1, "modules": [r"layers\.0\.mlp\.down_proj"]}, LAYER + 96 * 48),
    ],
)
def test_trainable_counts(tiny_model_dir: Path, fields: dict, expected: int) -> None:
    assert trainable_parameters(_freeze(tiny_model_dir, **fields))[0] == expected


def test_bottom_layer_is_the_one_that_trains(tiny_model_dir: Path) -> None:
    model = _freeze(tiny_model_dir, bottom_k_layers=1)
    trains = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {"0"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layers": [2]}, "index 2 is out of range for a model with 2 layers"),
        ({"bottom_k_layers": 3}, "bottom_k_layers=3 but the model has 2 layers"),
        ({"top_k_layers": 0, "modules": ["nothing_here"]}, "match no parameter name"),
        ({"top_k_layers": 0, "unfreeze_every": 1}, "needs something to train from the start"),
    ],
)
def test_layer_choice_mistakes(tiny_model_dir: Path, fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _freeze(tiny_model_dir, **fields)


def test_gradual_unfreezing_follows_steps_and_epochs(tiny_model_dir: Path) -> None:
    model, (schedule,) = _freeze_with_schedule(tiny_model_dir, top_k_layers=1, unfreeze_every=2, unfreeze_unit="steps")
    assert trainable_parameters(model)[0] == LAYER
    extra = Trainable(dormant=schedule.dormant_parameters())
    held = sum(p.numel() for g in param_groups(model, TrainingSection(), extra) for p in g["params"])
    assert held == 2 * LAYER, "the optimizer holds the layer that thaws later from the start"
    schedule.on_step_start(1, 0)
    assert trainable_parameters(model)[0] == LAYER
    schedule.on_step_start(2, 0)
    assert trainable_parameters(model)[0] == 2 * LAYER
    schedule.on_step_start(0, 0)  # a resumed run starts from its own step: the state follows the step, not history
    assert trainable_parameters(model)[0] == LAYER

    model, (schedule,) = _freeze_with_schedule(tiny_model_dir, top_k_layers=1, unfreeze_every=1)  # epochs
    schedule.on_step_start(100, 0)
    assert trainable_parameters(model)[0] == LAYER
    schedule.on_step_start(100, 1)
    assert trainable_parameters(model)[0] == 2 * LAYER


def test_frozen_layer_changes_only_after_it_thaws(tiny_model_dir: Path) -> None:
    """The loop contract: the method's step hooks' `on_step_start(step, epoch)` before each optimizer step."""
    model, (schedule,) = _freeze_with_schedule(tiny_model_dir, top_k_layers=1, unfreeze_every=2, unfreeze_unit="steps")
    model.train()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = tokenizer(["what is color of cat red"] * 2, return_tensors="pt")["input_ids"]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    optimizer = build_optimizer(
        model, TrainingSection(learning_rate=1e-2), Trainable(dormant=schedule.dormant_parameters())
    )
    bottom = model.model.layers[0].mlp.down_proj.weight
    embeddings = model.model.embed_tokens.weight
    start_bottom, start_embeddings = bottom.detach().clone(), embeddings.detach().clone()
    moved = []
    for step in range(4):
        schedule.on_step_start(step, 0)
        parts = causal_lm_loss(model, batch)
        (parts.loss_sum / parts.count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        moved.append(not torch.equal(bottom, start_bottom))
    assert moved == [False, False, True, True]
    assert torch.equal(embeddings, start_embeddings), "never scheduled, never trained"


def test_layerwise_run_with_lion_wsd_and_layer_decay(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(
        tmp_path, tiny_model_dir, "method=freeze", "method.bottom_k_layers=1", "method.modules=[norm]",
        "training.optimizer=lion", "training.learning_rate=1e-3", "training.scheduler=wsd",
        "training.layer_lr_decay=0.8", "eval.generate=false",
    )  # fmt: skip
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.5
    model, tokenizer = load_trained(str(result.run_dir))
    ids = tokenizer("what is color of cat", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(model(ids).logits, result.model(ids).logits)
    base = load_model(str(tiny_model_dir))
    assert torch.equal(base.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    assert not torch.equal(base.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
