"""The causal-LM loss: training.label_smoothing against the formula by hand, and the run setup that carries it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import tiny_config
from tunelab.data.tokenize import IGNORE
from tunelab.objectives import base
from tunelab.objectives.base import SetupArgs
from tunelab.objectives.lm import LMContext, causal_lm_loss
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.run import run_training

# Fixed logits over a 3-token vocabulary at each position; the loss reads positions 0..T-2 against labels 1..T-1.
LOGITS = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]]])


class FixedLM(nn.Module):
    """A 'language model' whose decoder hands the logits through and whose head is the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def get_decoder(self) -> nn.Module:
        outer = self

        class Decoder(nn.Module):
            def forward(self, **_: object) -> object:
                return type("Out", (), {"last_hidden_state": LOGITS + outer.weight})

        return Decoder()

    def get_output_embeddings(self) -> nn.Module:
        return nn.Identity()


BATCH = {
    "input_ids": torch.tensor([[0, 1, 2]]),
    "attention_mask": torch.ones(1, 3, dtype=torch.long),
    "labels": torch.tensor([[IGNORE, 0, 2]]),  # targets: token 0 after position 0, token 2 after position 1
}


def _nll(row: list[float], target: int) -> float:
    return -(row[target] - math.log(sum(math.exp(x) for x in row)))


def test_label_smoothing_by_hand() -> None:
    rows, targets = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [0, 2]
    plain = sum(_nll(r, t) for r, t in zip(rows, targets, strict=True))
    eps = 0.3
    # Smoothed target: (1 - eps) on the true token + eps / V on every token -> (1 - eps)·NLL + eps·mean_k NLL_k.
    smoothed = sum(
        (1 - eps) * _nll(r, t) + eps * sum(_nll(r, k) for k in range(3)) / 3 for r, t in zip(rows, targets, strict=True)
    )
    model = FixedLM().train()
    parts = causal_lm_loss(model, BATCH, LMContext(label_smoothing=eps))
    assert parts.count.item() == 2
    assert parts.loss_sum.item() == pytest.approx(smoothed, rel=1e-6)
    assert causal_lm_loss(model, BATCH, None).loss_sum.item() == pytest.approx(plain, rel=1e-6)
    # Validation (eval mode) reports the plain negative log-likelihood, so perplexity keeps its meaning.
    assert causal_lm_loss(model.eval(), BATCH, LMContext(eps)).loss_sum.item() == pytest.approx(plain, rel=1e-6)
    assert smoothed != pytest.approx(plain, rel=1e-3)


def test_sft_setup_carries_training_label_smoothing_and_loss_chunks(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = SetupArgs(nn.Linear(1, 1), None, torch.device("cpu"), False, tmp_path, None, "full", 0.2)
    built = OBJECTIVES["sft"].setup(None, args)
    assert built.module is args.model and built.ctx == LMContext(label_smoothing=0.2)
    # Through a real run: the value in the config is what the loss context receives.
    seen: list[tuple[float, int]] = []

    def recording(label_smoothing: float = 0.0, loss_chunk_tokens: int = 0) -> LMContext:
        seen.append((label_smoothing, loss_chunk_tokens))
        return LMContext(label_smoothing, loss_chunk_tokens)

    monkeypatch.setattr(base, "LMContext", recording)
    cfg = tiny_config(tmp_path, tiny_model_dir, "eval.generate=false", "eval.baseline=false", "training.max_steps=1",
                      "training.label_smoothing=0.15", "training.loss_chunk_tokens=64")  # fmt: skip
    run_training(cfg)
    assert seen == [(0.15, 64)]
