"""Task heads: pooling and losses against hand-computed values, trainable counts with a method underneath,
training on tensors lowers the loss, and body + head reload to identical logits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from tests.methods.test_methods import LAYER, LORA_R4
from tunelab.core.errors import ConfigError
from tunelab.methods.base import trainable_parameters
from tunelab.methods.registry import METHOD_CONFIGS, METHODS
from tunelab.models.load import load_model
from tunelab.models.pooling import first_token, last_token, mean_pool
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.data import align_word_labels
from tunelab.objectives.classify.heads import attach_head_, load_head_, save_head, task_loss
from tunelab.objectives.classify.losses import sequence_loss
from tunelab.train.config import TrainingSection
from tunelab.train.optim import Trainable, build_optimizer, param_groups

HIDDEN = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # sequence 0: 0 1 2 3, sequence 1: 4 5 6 7
RIGHT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
LEFT = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])


def test_pooling_reads_positions_from_the_mask() -> None:
    assert last_token(HIDDEN, RIGHT).flatten().tolist() == [2.0, 5.0]
    assert last_token(HIDDEN, LEFT).flatten().tolist() == [3.0, 7.0]
    assert first_token(HIDDEN, RIGHT).flatten().tolist() == [0.0, 4.0]
    assert first_token(HIDDEN, LEFT).flatten().tolist() == [1.0, 6.0]
    assert mean_pool(HIDDEN, RIGHT).flatten().tolist() == [1.0, 4.5]
    assert mean_pool(HIDDEN, LEFT).flatten().tolist() == [2.0, 6.5]


def test_losses_by_hand() -> None:
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    parts = sequence_loss(logits, labels)
    assert parts.loss_sum.item() == pytest.approx(math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)))
    assert (parts.count.item(), parts.correct.item()) == (2, 2)
    # Smoothing 0.2 over 2 classes: target (0.9, 0.1) -> -(0.9 log p + 0.1 log(1-p)) per example.
    smoothed = sequence_loss(logits, labels, label_smoothing=0.2).loss_sum.item()
    p0, p1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    assert smoothed == pytest.approx(
        -(0.9 * math.log(p0) + 0.1 * math.log(1 - p0)) - (0.9 * math.log(p1) + 0.1 * math.log(1 - p1))
    )
    mse = sequence_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.75, 1.0]), regression=True)
    assert (mse.loss_sum.item(), mse.count.item(), mse.correct.item()) == (0.0625 + 4.0, 2, 1)  # 1 is within 0.5


def test_word_labels_go_to_first_subtokens() -> None:
    assert align_word_labels([None, 0, 0, 1, 2, 2, None], [3, 0, 1]) == [-100, 3, -100, 0, 1, -100, -100]


def test_head_config_errors() -> None:
    with pytest.raises(ValueError, match="regression needs task=sequence and num_labels=1"):
        HeadConfig(problem="regression", num_labels=2)
    with pytest.raises(ValueError, match="labels names 3 classes but num_labels is 2"):
        HeadConfig(labels=["O", "B-PER", "I-PER"])


def _lora_classifier(model_dir: Path) -> torch.nn.Module:
    body = METHODS["lora"].apply_(load_model(str(model_dir)), METHOD_CONFIGS["lora"](r=4))
    torch.manual_seed(0)
    return attach_head_(body, HeadConfig(num_labels=3))


def test_counts_and_rates_with_lora_body(tiny_model_dir: Path) -> None:
    model = _lora_classifier(tiny_model_dir)
    assert trainable_parameters(model)[0] == LORA_R4 + 48 * 3 + 3
    groups = param_groups(model, TrainingSection(learning_rate=1e-3, head_lr=1e-2), Trainable(head=model.head))
    assert {g["lr"]: sum(p.numel() for p in g["params"]) for g in groups} == {1e-3: LORA_R4, 1e-2: 48 * 3 + 3}
    freeze = METHODS["freeze"].apply_(load_model(str(tiny_model_dir)), METHOD_CONFIGS["freeze"](top_k_layers=1))
    assert trainable_parameters(attach_head_(freeze, HeadConfig(num_labels=2)))[0] == LAYER + 48 * 2 + 2


def _train(model: torch.nn.Module, batch: dict, steps: int, lr: float) -> list[float]:
    optimizer = build_optimizer(model, TrainingSection(learning_rate=lr))
    model.train()
    losses = []
    for _ in range(steps):
        parts = task_loss(model, batch)
        loss = parts.loss_sum / parts.count
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


def test_lora_body_and_head_train_and_reload(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = _lora_classifier(tiny_model_dir)
    torch.manual_seed(1)
    ids = torch.randint(3, 290, (12, 6))
    mask = torch.ones_like(ids)
    mask[:4, 4:] = 0  # some right padding: the last real token is at position 3
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids[:, 0] % 3}
    losses = _train(model, batch, steps=25, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    METHODS["lora"].save(model.model, tmp_path / "adapter")
    save_head(model, tmp_path / "adapter")
    reloaded = load_head_(
        METHODS["lora"].load_(load_model(str(tiny_model_dir)), tmp_path / "adapter"), tmp_path / "adapter"
    )
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), model(ids, mask))


def test_encoder_token_head_trains_and_reloads(tmp_path: Path) -> None:
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = attach_head_(BertModel(config), HeadConfig(task="token", num_labels=3, labels=["O", "B-X", "I-X"]))
    assert model.pooling == "mean", "auto pooling on an encoder"
    ids = torch.randint(1, 50, (8, 7))
    labels = (ids % 3).masked_fill(ids > 40, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    losses = _train(model, batch, steps=30, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]
    model.model.save_pretrained(tmp_path / "model")
    save_head(model, tmp_path / "model")
    reloaded = load_head_(BertModel.from_pretrained(tmp_path / "model"), tmp_path / "model")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, batch["attention_mask"]), model(ids, batch["attention_mask"]))


def test_head_label_smoothing_applies_while_training_only() -> None:
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = attach_head_(BertModel(config), HeadConfig(num_labels=3), label_smoothing=0.3)
    ids = torch.randint(1, 50, (4, 5))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}
    with torch.no_grad():
        logits = model(ids, batch["attention_mask"])
        smoothed = task_loss(model.train(), batch).loss_sum
        plain = task_loss(model.eval(), batch).loss_sum
    torch.testing.assert_close(smoothed, sequence_loss(logits, batch["labels"], label_smoothing=0.3).loss_sum)
    torch.testing.assert_close(plain, sequence_loss(logits, batch["labels"]).loss_sum)
    assert abs(float(smoothed - plain)) > 1e-3


def test_heads_refuse_virtual_token_methods(tiny_model_dir: Path) -> None:
    body = METHODS["prompt"].apply_(load_model(str(tiny_model_dir)), METHOD_CONFIGS["prompt"](num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="cannot sit on a prefix/prompt-tuned model"):
        attach_head_(body, HeadConfig())
