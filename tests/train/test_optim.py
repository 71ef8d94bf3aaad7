"""Optimizers, parameter groups and learning-rate schedules, checked against hand-computed numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.methods.test_methods import LAYER
from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.methods.registry import METHOD_CONFIGS, METHODS
from tunelab.models.load import load_model
from tunelab.train.config import TrainingSection
from tunelab.train.optim import Lion, build_optimizer, build_scheduler, lr_factor, param_groups

# (scheduler options, total steps, warmup steps, {step: expected factor}); warmup gives (step+1)/(warm+1).
SCHEDULES = [
    ({"scheduler": "constant"}, 10, 2, {0: 1 / 3, 1: 2 / 3, 2: 1.0, 9: 1.0}),
    ({"scheduler": "linear"}, 10, 2, {2: 1.0, 6: 0.5, 9: 1 / 8, 10: 0.0}),
    ({"scheduler": "cosine"}, 10, 2, {2: 1.0, 4: 0.5 * (1 + math.cos(math.pi / 4)), 6: 0.5, 10: 0.0}),
    ({"scheduler": "cosine", "min_lr_ratio": 0.1}, 10, 2, {6: 0.1 + 0.9 * 0.5, 10: 0.1}),
    ({"scheduler": "linear", "min_lr_ratio": 0.2}, 10, 0, {5: 0.2 + 0.8 * 0.5}),
    ({"scheduler": "cosine_restarts", "num_cycles": 2}, 8, 0, {0: 1.0, 2: 0.5, 3: 0.5 * (1 + math.cos(0.75 * math.pi)),
                                                            4: 1.0, 6: 0.5, 8: 0.0}),
    ({"scheduler": "polynomial", "poly_power": 2.0}, 10, 0, {0: 1.0, 5: 0.25, 8: 0.04}),
    ({"scheduler": "inverse_sqrt"}, 100, 3, {2: 0.75, 3: 1.0, 15: 0.5, 63: 0.25}),
    ({"scheduler": "inverse_sqrt"}, 100, 0, {0: 1.0, 3: 0.5, 99: 0.1}),
    ({"scheduler": "wsd", "decay_ratio": 0.2}, 10, 2, {1: 2 / 3, 2: 1.0, 7: 1.0, 8: 1.0, 9: 0.5, 10: 0.0}),
    ({"scheduler": "wsd", "decay_ratio": 0.5, "min_lr_ratio": 0.1}, 20, 0, {9: 1.0, 10: 1.0, 15: 0.1 + 0.9 * 0.5}),
]  # fmt: skip


@pytest.mark.parametrize(("options", "total", "warm", "expected"), SCHEDULES)
def test_lr_factor_at_hand_computed_points(options: dict, total: int, warm: int, expected: dict) -> None:
    cfg = TrainingSection(**options)
    for step, factor in expected.items():
        assert lr_factor(step, total, warm, cfg) == pytest.approx(factor), f"step {step}"


def test_warmup_ratio_rounds_up_and_scheduler_drives_every_group() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=1.0)
    cfg = TrainingSection(scheduler="linear", warmup_ratio=0.15)  # ceil(0.15 * 10) = 2 warmup steps
    sched = build_scheduler(opt, cfg, total_steps=10)
    seen = []
    for _ in range(4):
        seen.extend(sched.get_last_lr())
        opt.step()
        sched.step()
    expected = [1 / 3, 2 / 3, 1.0, 7 / 8]
    assert seen == pytest.approx([x for f in expected for x in (f, 0.1 * f)])


def _untied_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def _sizes(groups: list[dict]) -> dict[tuple[float, float], int]:
    return {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}


def test_layer_lr_decay_groups_on_the_tied_tiny_model(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    cfg = TrainingSection(learning_rate=1.0, layer_lr_decay=0.5, weight_decay=0.1)
    norms = 2 * 48  # two RMSNorm gains per layer
    # Top layer, final norm and the tied embedding/head at the peak; layer 0 at 0.5.
    assert _sizes(param_groups(model, cfg)) == {
        (1.0, 0.1): LAYER - norms + 300 * 48,
        (1.0, 0.0): norms + 48,
        (0.5, 0.1): LAYER - norms,
        (0.5, 0.0): norms,
    }


def test_embedding_and_head_rates_on_an_untied_model() -> None:
    cfg = TrainingSection(learning_rate=1.0, layer_lr_decay=0.5, head_lr=3.0)
    sizes = _sizes(param_groups(_untied_llama(), cfg))
    assert sizes == {(1.0, 0.0): LAYER + 48, (3.0, 0.0): 300 * 48, (0.5, 0.0): LAYER, (0.25, 0.0): 300 * 48}
    cfg = TrainingSection(learning_rate=1.0, embedding_lr=0.01)
    assert _sizes(param_groups(_untied_llama(), cfg)) == {(1.0, 0.0): 2 * LAYER + 48 + 300 * 48, (0.01, 0.0): 300 * 48}


def test_loraplus_trains_b_faster(tiny_model_dir: Path) -> None:
    model = METHODS["lora"].apply_(load_model(str(tiny_model_dir)), METHOD_CONFIGS["lora"](r=4))
    groups = param_groups(model, TrainingSection(learning_rate=1e-3, loraplus_lr_ratio=16))
    b_size = 2 * 4 * (48 + 24 + 24 + 48 + 96 + 96 + 48)  # r x out_features for every adapted linear: 3,072
    assert _sizes(groups) == {(1e-3, 0.0): 6144 - b_size, (16e-3, 0.0): b_size}
    assert groups[0]["lr"] == 1e-3, "the base-rate group comes first: it is the rate the loop logs"


def test_rate_mistakes_are_config_errors(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    with pytest.raises(ConfigError, match="ties its output head to its input embeddings"):
        param_groups(model, TrainingSection(head_lr=1.0, embedding_lr=2.0))
    with pytest.raises(ConfigError, match="no trainable LoRA B matrices"):
        param_groups(model, TrainingSection(loraplus_lr_ratio=16))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="Nothing to train"):
        param_groups(model, TrainingSection())


def test_lion_update_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99))
    p.grad = torch.tensor([0.5])
    opt.step()  # sign(0.9*0 + 0.1*0.5) = +1 -> p = 0.9; m = 0.01*0.5 = 0.005
    assert p.item() == pytest.approx(0.9)
    assert opt.state[p]["exp_avg"].item() == pytest.approx(0.005)
    p.grad = torch.tensor([-0.5])
    opt.step()  # sign(0.9*0.005 + 0.1*(-0.5)) = sign(-0.0455) = -1 -> p = 1.0
    assert p.item() == pytest.approx(1.0)
    q = torch.nn.Parameter(torch.tensor([1.0]))
    opt = Lion([q], lr=0.1, weight_decay=0.5)
    q.grad = torch.tensor([0.5])
    opt.step()  # 1 * (1 - 0.1*0.5) - 0.1 = 0.85
    assert q.item() == pytest.approx(0.85)


@pytest.mark.parametrize(
    ("optimizer", "lr", "extra"),
    [("adamw", 0.1, {}), ("sgd", 0.1, {}), ("sgd", 0.1, {"nesterov": True}), ("adafactor", 0.1, {}),
     ("lion", 0.03, {})],
)  # fmt: skip
def test_every_optimizer_minimises_a_quadratic(optimizer: str, lr: float, extra: dict) -> None:
    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.constant_(model.weight, 2.0)
    opt = build_optimizer(model, TrainingSection(optimizer=optimizer, learning_rate=lr, weight_decay=0.01, **extra))
    losses = []
    for _ in range(30):
        loss = (model.weight**2).sum()
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]


def test_optimizer_config_errors(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="nesterov needs momentum > 0"):
        load_config(None, ["data.train=x.jsonl", "training.optimizer=sgd", "training.nesterov=true",
                           "training.momentum=0"])  # fmt: skip
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        build_optimizer(torch.nn.Linear(2, 2), TrainingSection(optimizer="adamw_8bit"))
