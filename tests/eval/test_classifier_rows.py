"""A classifier's scored rows (eval.classify.classifier_rows): what the run's table and `tunelab eval RUN` pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.eval.calibration import expected_calibration_error
from tunelab.eval.classify import classifier_metrics, classifier_rows
from tunelab.models.load import load_model
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.data import ClassItem
from tunelab.objectives.classify.heads import attach_head_
from tunelab.objectives.classify.predict import predict

NAMES = ["neg", "pos"]
CPU = torch.device("cpu")


def test_each_item_gets_its_prediction_accuracy_and_confidence(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    body = load_model(str(tiny_model_dir))
    model = attach_head_(body, HeadConfig(num_labels=2, labels=NAMES))
    items = [ClassItem(input_ids=[5 + k, 6 + 2 * k, 7], target=k % 2, label=NAMES[k % 2], origin=f"f:{k}")
             for k in range(7)]  # fmt: skip
    rows = classifier_rows(model, items, 3, 0, CPU)
    assert rows is not None and [r["origin"] for r in rows] == [i.origin for i in items]
    predicted = predict(model, items, 3, 0, CPU)
    assert [r["prediction"] for r in rows] == [NAMES[p] for p in predicted]
    assert [r["accuracy"] for r in rows] == [float(p == i.target) for p, i in zip(predicted, items, strict=True)]
    assert all(0.5 <= r["confidence"] <= 1.0 for r in rows)  # the top one of two probabilities
    assert [r["label"] for r in rows] == [i.label for i in items]
    metrics = classifier_metrics(rows, NAMES)
    assert set(metrics) == {"macro_precision", "macro_recall", "ece"}
    confidence = np.array([r["confidence"] for r in rows])
    correct = np.array([r["accuracy"] for r in rows])
    assert metrics["ece"] == pytest.approx(expected_calibration_error(confidence, correct))
    assert classifier_rows(body, items, 3, 0, CPU) is None  # a language model has no class rows
