"""SetFit: pair sampling, the cosine pair loss by hand, the saved head against scikit-learn, and a tiny BERT trained
through run_training with `objective: setfit` that then classifies held-out texts."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.objectives.embed.test_contrastive import ATTRS, _tiny_bert, _word_tokenizer
from tunelab.core.errors import DataError
from tunelab.objectives.embed.setfit_head import (
    HEAD_FILE,
    SetFitClassifier,
    SetFitHead,
    contrastive_pairs,
    cosine_pair_loss,
    fit_head,
)
from tunelab.recipes.run import prepare_args


def test_contrastive_pairs_one_partner_of_each_kind_per_round() -> None:
    labels = ["a", "a", "b"]
    pairs = contrastive_pairs(labels, 1, seed=0)
    # Text 0: positive 1, negative 2; text 1: positive 0, negative 2; text 2 has no same-label partner: negative only.
    assert sorted(pairs) == [(0, 1, 1.0), (0, 2, 0.0), (1, 0, 1.0), (1, 2, 0.0), (2, 0, 0.0)] or sorted(pairs) == [
        (0, 1, 1.0), (0, 2, 0.0), (1, 0, 1.0), (1, 2, 0.0), (2, 1, 0.0),
    ]  # fmt: skip
    many = contrastive_pairs(["x", "y", "x", "z", "y", "x"], 4, seed=1)
    labels6 = ["x", "y", "x", "z", "y", "x"]
    assert all((labels6[i] == labels6[j]) == (t == 1.0) and i != j for i, j, t in many)
    assert len(many) == 4 * (6 + 5), "every text: a negative each round, a positive when its label has a partner"
    assert many == contrastive_pairs(labels6, 4, seed=1) != contrastive_pairs(labels6, 4, seed=2)
    with pytest.raises(DataError, match="two labels"):
        contrastive_pairs(["a", "a"], 1)


def test_cosine_pair_loss_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    target = torch.tensor([1.0, 0.0, 0.0])
    # cos = 1/√2, 0, 1 -> squared errors (1/√2 - 1)², 0, 1; right side of 0.5: yes, yes, no.
    loss, correct = cosine_pair_loss(a, b, target)
    assert loss.item() == pytest.approx((1 / math.sqrt(2) - 1) ** 2 + 1, rel=1e-6)
    assert int(correct) == 2


@pytest.mark.parametrize("classes", [2, 3])
def test_head_probabilities_match_scikit_learn(classes: int, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = [str(i % classes) for i in range(60)]
    x[:, 0] += np.array([int(v) for v in y]) * 2.0
    head = fit_head(x, y, c=0.5)
    reference = LogisticRegression(C=0.5, max_iter=1000, random_state=0).fit(x, y)
    loaded = SetFitHead.load(head.save(tmp_path).parent)
    assert np.allclose(loaded.probabilities(x), reference.predict_proba(x), atol=1e-8)
    assert loaded.predict(x) == list(reference.predict(x))


ANIMALS = ["cat", "dog", "tiger"]
THINGS = ["piano", "glass", "train"]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = ["animal", "thing"][i % 2]
        word = rng.choice(ANIMALS if label == "animal" else THINGS)
        out.append({"text": f"the {rng.choice(ATTRS)} {word} is here", "label": label})
    return out


def test_setfit_trains_an_encoder_and_head_through_run_training(tmp_path: Path) -> None:
    from tunelab.config import load_config
    from tunelab.methods.trained import artifact_dir
    from tunelab.objectives.embed.setfit import prepare_setfit
    from tunelab.recipes.run import run_training

    tokenizer = _word_tokenizer()
    folder = tmp_path / "bert"
    _tiny_bert(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows(16, 0)))  # 8 a class: a few-shot set
    val.write_text("".join(json.dumps(r) + "\n" for r in _rows(40, 1)))
    cfg = load_config(None, [
        f"data.train={train}", f"data.validation={val}", f"model.source={folder}", "objective=setfit",
        "objective.pairs_per_text=6", "method=full", "training.learning_rate=3e-3", "training.batch_size=16",
        "training.epochs=2", "training.precision=fp32", f"output.dir={tmp_path / 'runs'}", "output.name=setfit"
    ])  # fmt: skip
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"], (result.baseline, result.final)
    assert "val_pair_acc" in result.final
    saved = artifact_dir(result.run_dir, "full")
    recorded = json.loads((saved / HEAD_FILE).read_text())
    assert recorded["classes"] == ["animal", "thing"] and recorded["val_examples"] == 40
    assert recorded["train_accuracy"] == 1.0 and recorded["val_accuracy"] >= 0.9, recorded
    classifier = SetFitClassifier.load(saved)
    texts = [r["text"] for r in _rows(40, 1)]
    predicted = classifier.predict(texts)
    right = sum(p == r["label"] for p, r in zip(predicted, _rows(40, 1), strict=True)) / 40
    assert right == pytest.approx(recorded["val_accuracy"]), "the saved folder predicts as the run measured"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": f"q {i}", "positive": f"p {i}"}) + "\n" for i in range(8)))
    with pytest.raises(DataError, match="classification rows only"):
        other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": [str(pairs)]})})
        prepare_setfit(prepare_args(other, tokenizer, tmp_path / "run2"))
