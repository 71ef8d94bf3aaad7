"""Token-budget micro-batch pieces, and causal attention without a padding mask, change nothing but memory/speed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_config
from tests.tiny import write_color_task
from tunelab.data.load import load_examples
from tunelab.data.tokenize import IGNORE, collate, tokenize_all
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.lm import causal_lm_loss, right_padded
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.run import run_training
from tunelab.regularizers.adversarial import Adversarial
from tunelab.regularizers.task_weighting import TaskWeighting
from tunelab.train.metrics import read_metrics
from tunelab.train.microbatch import Pieces, split_rows, token_budget


def _batch(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    rows = len(lengths)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    ids = torch.arange(rows * width).reshape(rows, width) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, IGNORE)}


def test_split_rows_cuts_even_pieces_under_the_budget_each_trimmed_to_its_longest_row() -> None:
    batch = _batch([10, 9, 3, 2, 7], width=10)  # 50 padded tokens
    pieces = split_rows(batch, Pieces(20))  # 2 rows of 10 fit: ceil(5 / 2) = 3 pieces of 2 rows
    assert [p["input_ids"].shape for p in pieces] == [(2, 10), (2, 3), (1, 7)]
    assert torch.equal(torch.cat([p["input_ids"][:, :3] for p in pieces]), batch["input_ids"][:, :3])
    assert sum(int(p["attention_mask"].sum()) for p in pieces) == int(batch["attention_mask"].sum())
    assert split_rows(batch, None) == [batch]
    assert split_rows(batch, Pieces(50)) == [batch]
    assert len(split_rows(batch, Pieces(1))) == 5  # never less than one row a piece
    # Whole rows that do not pack evenly: 4 x 10 tokens under 15 is 4 pieces of one row, never 2 x 2 rows of 20.
    assert [p["input_ids"].shape for p in split_rows(_batch([10] * 4, width=10), Pieces(15))] == [(1, 10)] * 4
    # With a row minimum (auto's two), long rows go two to a piece past the budget; short ones keep to it.
    assert [p["input_ids"].shape[0] for p in split_rows(_batch([10] * 4, width=10), Pieces(15, 2))] == [2, 2]
    assert [p["input_ids"].shape[0] for p in split_rows(_batch([3] * 12, width=3), Pieces(15, 2))] == [4, 4, 4]


def test_token_budget_and_which_objectives_split(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert token_budget("auto", torch.device("cpu")) == Pieces(512, min_rows=2)
    assert token_budget("auto", torch.device("cuda")) is None
    assert token_budget(256, torch.device("cuda")) == Pieces(256, min_rows=1)
    assert token_budget(None, torch.device("cpu")) is None
    sft = OBJECTIVES["sft"]
    assert sft.row_independent and OBJECTIVES["pretrain"].row_independent
    assert not OBJECTIVES["dpo"].row_independent  # chosen and rejected rows belong together
    assert not OBJECTIVES["contrastive"].row_independent  # in-batch negatives
    rows = [SimpleNamespace(task="color"), SimpleNamespace(task="size")]  # what the wrapper reads of an item
    fixed = tiny_config(tmp_path, tiny_model_dir, "training.task_weights={color: 2.0}").training
    weighted = TaskWeighting(fixed.task_weights, fixed.task_weighting, rows, torch.device("cpu"))
    assert weighted.wrap(sft).row_independent  # weighted sums still add up
    uncertainty = tiny_config(tmp_path, tiny_model_dir, "training.task_weighting=uncertainty").training
    learned = TaskWeighting(uncertainty.task_weights, uncertainty.task_weighting, rows, torch.device("cpu"))
    assert not learned.wrap(sft).row_independent  # per-task means
    adversarial = tiny_config(tmp_path, tiny_model_dir, "training.adversarial.method=fgm").training
    assert not Adversarial(adversarial.adversarial).wrap(sft).row_independent  # perturbation over the micro-batch


def test_pieces_train_to_the_same_weights_as_whole_micro_batches(tmp_path: Path, tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows, _ = tokenize_all(load_examples([write_color_task(tmp_path / "color.jsonl", 8)]).examples, tokenizer, 128)
    assert len(split_rows(collate(rows, tokenizer.pad_token_id), Pieces(40))) >= 3  # the budget below really splits
    common = ["training.epochs=1", "training.grad_accum=2", "eval.baseline=false", "eval.generate=false"]
    whole = run_training(tiny_config(tmp_path, tiny_model_dir, *common, "training.micro_batch_tokens=null", name="a"))
    pieces = run_training(tiny_config(tmp_path, tiny_model_dir, *common, "training.micro_batch_tokens=40", name="b"))
    a = load_file(whole.run_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(pieces.run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5)  # Adam amplifies rounding
    losses = [[m["loss"] for m in read_metrics(r.run_dir) if "loss" in m] for r in (whole, pieces)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_causal_loss_without_the_padding_mask_equals_each_row_run_alone(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "color.jsonl", 6)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    items, _ = tokenize_all(load_examples([data]).examples, tokenizer, 128)
    items[0].input_ids, items[0].labels = items[0].input_ids * 3, items[0].labels * 3  # one long row: much padding
    model = load_model(str(tiny_model_dir), dtype=torch.float32).eval().requires_grad_(False)
    batch = collate(items, tokenizer.pad_token_id)
    assert right_padded(batch["attention_mask"]) and not right_padded(batch["attention_mask"].flip(1))
    alone = sum(float(causal_lm_loss(model, collate([item], tokenizer.pad_token_id)).loss_sum) for item in items)
    padded = causal_lm_loss(model, batch)
    assert float(padded.loss_sum) == pytest.approx(alone, rel=1e-5)
    assert int(padded.count) == sum(int((torch.tensor(i.labels[1:]) != IGNORE).sum()) for i in items)
