"""Packing without cross-attention, curricula, class balance and task mixtures, checked against hand values."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunelab.core.types import Message
from tunelab.data.pack import pack, pack_indices, padding_waste
from tunelab.data.records import Example
from tunelab.data.schedule import (
    Schedule,
    balanced_weights,
    competence,
    epoch_batches,
    mixture_weights,
)
from tunelab.data.scoring import score_losses
from tunelab.data.tokenize import IGNORE, Tokenized, collate, model_inputs, tokenize_example


def test_pack_indices_fit_and_cover() -> None:
    lengths = [7, 3, 5, 2, 8, 1, 4]
    bins = pack_indices(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 30 tokens in bins of 10: optimal
    assert padding_waste([2, 4, 4], [[0, 1], [2]]) == pytest.approx(1 - 10 / 12)


def test_packed_batch_loss_equals_separate_examples(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    convs = [("what is color of cat", "red"), ("two", "blue sky"), ("one dog sat on the mat", "yes")]
    items = [tokenize_example(Example([Message("user", q), Message("assistant", a)], f"x:{i}"), tokenizer, 64)
             for i, (q, a) in enumerate(convs)]  # fmt: skip
    (packed,) = pack(items, 256)
    assert packed.seq_lens == [len(t.input_ids) for t in items] and packed.target_tokens == sum(
        t.target_tokens for t in items
    )

    def loss_sum(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**model_inputs(batch)).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum")

    with torch.no_grad():
        separate = sum(loss_sum(collate([t], tokenizer.pad_token_id)) for t in items)
        together = collate([packed, items[0]], tokenizer.pad_token_id)  # a packed row next to a padded one
        assert together["position_ids"][0].tolist()[: packed.seq_lens[0] + 2] == [
            *range(packed.seq_lens[0]), 0, 1]  # fmt: skip
        joint = loss_sum(together) - loss_sum(collate([items[0]], tokenizer.pad_token_id))
    assert torch.allclose(joint, separate, rtol=1e-4)
    scores = score_losses(model, items, tokenizer.pad_token_id, batch_size=2)
    assert len(scores) == 3 and all(s > 0 for s in scores)


def test_competence_values() -> None:
    assert competence(0.5, "linear", 0.2, 4) == pytest.approx(0.6)
    assert competence(0.5, "root", 0.2, 4) == pytest.approx(0.52**0.5)
    assert competence(0.5, "step", 0.2, 4) == 0.75 and competence(0.0, "step", 0.2, 4) == 0.25
    assert competence(1.0, "linear", 0.2, 4) == 1.0


def test_curriculum_sees_everything_easy_first() -> None:
    difficulty = tuple(float(i) for i in range(40))
    lengths = [10] * 40
    schedule = Schedule(order="curriculum", difficulty=difficulty, pacing="linear", start_fraction=0.2)
    batches = epoch_batches(lengths, 4, seed=0, epoch=0, schedule=schedule)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(40))
    assert max(batches[0]) < 8  # the first batch comes from the easiest 20%
    assert sum(flat[:20]) < sum(flat[20:])
    assert batches == epoch_batches(lengths, 4, seed=0, epoch=0, schedule=schedule)
    steps = epoch_batches(lengths, 4, 0, 0, schedule=Schedule(order="curriculum", difficulty=difficulty,
                                                              pacing="step", buckets=2))  # fmt: skip
    assert max(i for b in steps[:5] for i in b) < 20  # the first half of the epoch uses only the easier bucket
    later = epoch_batches(lengths, 4, seed=0, epoch=1, schedule=schedule)  # past curriculum_epochs: shuffled
    assert sorted(i for b in later for i in b) == list(range(40))


def test_balanced_and_mixture_sampling() -> None:
    labels = ["a"] * 900 + ["b"] * 100
    assert balanced_weights(["x", "x", "y"]) == (0.25, 0.25, 0.5)
    batches = epoch_batches([5] * 1000, 10, 0, 0, schedule=Schedule(weights=balanced_weights(labels)))
    drawn = Counter(labels[i] for b in batches for i in b)
    assert sum(drawn.values()) == 1000 and 400 < drawn["b"] < 600
    tasks = ["math"] * 90 + ["code"] * 10
    assert sum(mixture_weights(tasks, {}, 1.0)[:90]) == pytest.approx(0.9)
    uniform = mixture_weights(tasks, {}, 1e6)
    assert sum(uniform[:90]) == pytest.approx(0.5, abs=1e-3)
    only = mixture_weights(tasks, {"math": 1.0}, 1.0)
    assert sum(only[90:]) == 0 and sum(only) == pytest.approx(1.0)
    assert mixture_weights(tasks, {"math": 3, "code": 1}, 1.0)[95] == pytest.approx(0.25 / 10)


def test_collate_without_packing_has_no_position_ids() -> None:
    batch = collate([Tokenized([1, 2, 3], [IGNORE, 2, 3], "x")], pad_id=0)
    assert "position_ids" not in batch and set(model_inputs(batch)) == {"input_ids", "attention_mask"}
