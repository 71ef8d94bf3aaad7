"""Multi-task training: fixed and uncertainty-weighted task losses (hand-computed), the task tensor in batches,
and per-task validation metrics from a real run on the tiny model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from tunelab.config import load_config
from tunelab.core.errors import ConfigError
from tunelab.core.types import LossParts
from tunelab.data.tokenize import Tokenized
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.run import run_training
from tunelab.regularizers.task_weighting import TaskWeighting, combine_task_losses
from tunelab.train.config import TrainingSection
from tunelab.train.metrics import read_metrics


def parts(loss_sum: float, count: int) -> LossParts:
    return LossParts(loss_sum=torch.tensor(loss_sum), count=torch.tensor(count), correct=torch.tensor(1))


def test_fixed_weights_hand_computed() -> None:
    out = combine_task_losses({0: parts(6.0, 3), 1: parts(4.0, 1)}, torch.tensor([2.0, 0.5]))
    assert float(out.loss_sum) == pytest.approx(2 * 6 + 0.5 * 4)  # 14
    assert int(out.count) == 4 and int(out.correct) == 2


def test_uncertainty_weighted_loss_hand_computed() -> None:
    # Task 0: mean loss 6/3 = 2, s0 = 0 -> 1·2 + 0 = 2. Task 1: mean 4/1 = 4, s1 = ln 2 -> 4/2 + ln 2 = 2.693147.
    # Kendall's loss 4.693147; the loop divides the summed loss by the 4 targets, so loss_sum = 4 · 4.693147.
    s = torch.tensor([0.0, math.log(2.0)], requires_grad=True)
    out = combine_task_losses({0: parts(6.0, 3), 1: parts(4.0, 1)}, torch.ones(2), s)
    assert float(out.loss_sum.detach()) == pytest.approx(4 * (2 + 2 + math.log(2.0)), rel=1e-6)
    out.loss_sum.backward()
    # d/ds_t = 4 · (1 - exp(-s_t) · mean_t): task 0 -> 4 · (1 - 2) = -4; task 1 -> 4 · (1 - 4/2) = -4.
    torch.testing.assert_close(s.grad, torch.tensor([-4.0, -4.0]))


def test_task_tensor_and_weighting_on_a_model(tiny_model_dir: Path) -> None:
    from tunelab.models.load import load_model

    model = load_model(str(tiny_model_dir)).train()
    rng = random.Random(0)
    items = []
    for k in range(6):
        ids = [rng.randrange(5, 60) for _ in range(7 + k)]
        items.append(Tokenized(ids, [-100, -100, *ids[2:]], f"r{k}", task="a" if k % 2 else "b"))
    sft = OBJECTIVES["sft"]
    cfg = TrainingSection(task_weights={"a": 1.0, "b": 0.0})
    weighting = TaskWeighting(cfg.task_weights, cfg.task_weighting, items, torch.device("cpu"))
    wrapped = weighting.wrap(sft)
    assert list(weighting.parameters()) == []
    batch = wrapped.collate(items, 0)
    assert batch["task"].tolist() == [1, 0, 1, 0, 1, 0]  # tasks sorted: a -> 0, b -> 1
    only_a = sft.loss(model, sft.collate([t for t in items if t.task == "a"], 0), None)
    weighted = wrapped.loss(model, batch, None)
    torch.testing.assert_close(weighted.loss_sum, only_a.loss_sum, rtol=1e-4, atol=1e-4)  # b weighs 0
    # Validation (eval mode) is left unweighted: the plain loss of the whole batch.
    model.eval()
    plain = sft.loss(model, sft.collate(items, 0), None)
    torch.testing.assert_close(wrapped.loss(model, batch, None).loss_sum, plain.loss_sum, rtol=1e-4, atol=1e-4)

    learned = list(TaskWeighting({}, "uncertainty", items, torch.device("cpu")).parameters())
    assert len(learned) == 1 and learned[0].shape == (2,)


def test_unknown_task_weight_is_a_config_error() -> None:
    items = [Tokenized([1, 2, 3], [1, 2, 3], "x", task="dates")]
    with pytest.raises(ConfigError, match="dats"):
        TaskWeighting({"dats": 2.0}, "fixed", items, torch.device("cpu"))


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_uncertainty_weighted_run_reports_each_task(tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = random.Random(1)
    colors = {"cat": "red", "dog": "blue", "sky": "blue"}
    sizes = {"cat": "small", "dog": "big", "sky": "big"}
    words = rng.choices(list(colors), k=60)
    color = write_rows(tmp_path / "color.jsonl", [(f"color of {w}", colors[w]) for w in words])
    size = write_rows(tmp_path / "size.jsonl", [(f"size of {w}", sizes[w]) for w in reversed(words)])
    cfg = load_config(None, [
        f"data.train=[{color},{size}]", "data.schedule.sampling=mixture", f"model.source={tiny_model_dir}",
        f"output.dir={tmp_path}", "output.name=mt", "training.precision=fp32", "training.learning_rate=3e-3",
        "training.batch_size=8", "training.max_steps=6", "training.eval_every=3", "training.task_weighting=uncertainty",
        "eval.generate=false", "eval.baseline=false",
    ])  # fmt: skip
    result = run_training(cfg)
    evals = [m for m in read_metrics(result.run_dir) if "val_loss" in m]
    assert evals and all({"val_loss/color", "val_loss/size", "val_token_acc/size"} <= set(m) for m in evals)
    final = result.final
    # The overall validation loss is the token-weighted mean of the two tasks' (same counting, no weighting).
    assert min(final["val_loss/color"], final["val_loss/size"]) <= final["val_loss"]
    assert final["val_loss"] <= max(final["val_loss/color"], final["val_loss/size"])
