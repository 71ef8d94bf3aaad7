"""Curriculum by the base model's loss: hand-computed scores, the order they give, the run-folder cache, a run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.helpers import tiny_config
from tunelab.data.pipeline import PreparedData
from tunelab.data.schedule import Schedule, epoch_batches
from tunelab.data.scoring import SCORES_FILE, apply_loss_difficulty, score_losses
from tunelab.data.tokenize import IGNORE, Tokenized
from tunelab.recipes.run import difficulty_scoring

EASY = 1  # the fake model predicts token 1 with probability 1/2 and every other token with 1/6


class FixedLM(nn.Module):
    """Logits log(3) for token 1 and 0 for tokens 0, 2, 3 at every position: loss log 2 on a target 1, log 6 else."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None) -> SimpleNamespace:
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, 4)
        logits[..., EASY] = math.log(3)
        return SimpleNamespace(logits=logits)


def item(targets: list[int], origin: str) -> Tokenized:
    ids = [0, *targets]
    return Tokenized(ids, [IGNORE, *targets], origin)


def test_scores_are_mean_target_loss_by_hand() -> None:
    items = [item([1, 1, 2], "a"), item([1] * 9, "long_easy"), item([3], "short_hard")]
    expected = [(2 * math.log(2) + math.log(6)) / 3, math.log(2), math.log(6)]
    assert score_losses(FixedLM(), items, pad_id=0, batch_size=3) == pytest.approx(expected, rel=1e-6)
    assert score_losses(FixedLM(), items, pad_id=0, batch_size=1) == pytest.approx(expected, rel=1e-6)


def loss_run_config(tmp_path: Path, model_dir: Path):
    return tiny_config(tmp_path, model_dir, "data.schedule.order=curriculum", "data.schedule.difficulty=loss")


def test_curriculum_follows_loss_not_length(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Long examples are easy (all targets 1), short ones hard: by length the order would be the reverse.
    items = [item([1] * 20, f"easy{i}") for i in range(8)] + [item([2, 3], f"hard{i}") for i in range(8)]
    data = PreparedData(items, [], [], report={"fingerprint": "f"}, schedule=Schedule(
        order="curriculum", difficulty=tuple(float(len(t.input_ids)) for t in items), start_fraction=0.25))  # fmt: skip
    cfg = loss_run_config(tmp_path, tiny_model_dir)
    model = FixedLM()
    scored = apply_loss_difficulty(model, data, difficulty_scoring(cfg), tmp_path, pad_id=0)
    assert scored.schedule.difficulty == pytest.approx([math.log(2)] * 8 + [math.log(6)] * 8)
    batches = epoch_batches([len(t.input_ids) for t in items], 4, seed=0, epoch=0, schedule=scored.schedule)
    assert all(i < 8 for b in batches[:2] for i in b)  # the first half of the epoch: the 8 low-loss examples
    assert sorted(i for b in batches for i in b) == list(range(16))
    saved = json.loads((tmp_path / SCORES_FILE).read_text())
    assert saved["count"] == 16 and saved["min"] == pytest.approx(math.log(2))
    assert scored.report["difficulty"]["cached"] is False

    calls = model.calls
    again = apply_loss_difficulty(
        model, data, difficulty_scoring(cfg), tmp_path, pad_id=0
    )  # resumed run: read from the cache
    assert model.calls == calls and again.report["difficulty"]["cached"] is True
    assert again.schedule.difficulty == scored.schedule.difficulty
    other = PreparedData(items[:4], [], [], report={"fingerprint": "f"}, schedule=data.schedule)
    apply_loss_difficulty(model, other, difficulty_scoring(cfg), tmp_path, pad_id=0)  # other data: scored again
    assert model.calls > calls

    from tunelab.core.errors import ConfigError

    not_lm = PreparedData([object()], [], [], report={}, schedule=data.schedule)  # e.g. classify's items
    with pytest.raises(ConfigError, match="difficulty: length or field"):
        apply_loss_difficulty(model, not_lm, difficulty_scoring(cfg), tmp_path, pad_id=0)

    shuffled = tiny_config(tmp_path, tiny_model_dir, "data.schedule.order=curriculum")  # difficulty: length
    assert apply_loss_difficulty(model, data, difficulty_scoring(shuffled), tmp_path, pad_id=0) is data


def test_run_scores_the_base_model_before_training(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunelab.recipes.run as run
    from tunelab.models.load import load_model, load_tokenizer

    seen = {}
    real_fit = run.fit

    def spy_fit(model, objective, train, val, *args, **kwargs):
        seen["schedule"], seen["train"] = kwargs["schedule"], train
        return real_fit(model, objective, train, val, *args, **kwargs)

    monkeypatch.setattr(run, "fit", spy_fit)
    cfg = loss_run_config(tmp_path, tiny_model_dir).model_copy(deep=True)
    cfg.training.epochs, cfg.training.max_steps, cfg.eval.baseline, cfg.eval.generate = 1, 2, False, False
    result = run.run_training(cfg)
    saved = json.loads((result.run_dir / SCORES_FILE).read_text())
    base = load_model(str(tiny_model_dir))
    expected = score_losses(base, seen["train"], load_tokenizer(str(tiny_model_dir)).pad_token_id)
    assert saved["scores"] == pytest.approx(expected, rel=1e-4)
    assert seen["schedule"].difficulty == pytest.approx(expected, rel=1e-4)
    assert seen["schedule"].difficulty != tuple(float(len(t.input_ids)) for t in seen["train"])
