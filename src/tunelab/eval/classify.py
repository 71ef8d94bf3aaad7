"""Scoring a finished `classify` run on a labelled file (`tunelab eval RUN --data FILE`): the validation metrics of
training (loss, accuracy, macro-F1 / entity F1 / MSE) and one prediction per row; a run with task heads scores
each row by the head of its task. A single-label classifier also gets macro precision and recall, its confusion
matrix and its calibration (expected calibration error, reliability diagram) from the predicted probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.device import autocast, eval_mode
from tunelab.core.errors import DataError
from tunelab.data.load import load_examples
from tunelab.eval.calibration import Reliability, reliability
from tunelab.eval.labels import LabelReport, label_report
from tunelab.models.load import pad_id
from tunelab.objectives.classify.config import KIND, Task, task_of
from tunelab.objectives.classify.data import ClassItem, collate_items, encode
from tunelab.objectives.classify.heads import TaskModel
from tunelab.objectives.classify.multi import MultiHeadModel
from tunelab.objectives.classify.objective import OBJECTIVE
from tunelab.objectives.classify.predict import load_classifier, predict, scores, shown, task_scores
from tunelab.train.module import TrainingModule
from tunelab.train.validation import validation_metrics


def evaluate_file(
    run: str | Path, data_file: str | Path, batch_size: int = 16
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A classify run scored on a labelled file (rows of the kind it trained on): the validation metrics of
    training (loss, accuracy, macro-F1 / entity F1 / MSE) and one prediction per row. A run with task heads scores
    each row by the head of its task (file stem or `task` field) and reports each task's metrics.

    Rows carry their per-example scores: `accuracy` (0/1) and `confidence` (the top class's probability) for a
    classifier, `squared_error` and `abs_error` for regression; a classifier's metrics add macro_precision,
    macro_recall and ece (`classifier_report` gives its confusion matrix and reliability bins)."""
    model, tokenizer = load_classifier(run)
    if isinstance(model, MultiHeadModel):
        return _evaluate_task_heads(model, tokenizer, run, data_file, batch_size)
    task = task_of(model.cfg)
    names = model.cfg.labels
    examples = load_examples([str(data_file)]).examples
    wrong = sorted({ex.kind for ex in examples} - {KIND.get(task, "token_classification")})
    if not examples or wrong:
        raise DataError(
            f"'{data_file}' holds {'no usable rows' if not examples else ', '.join(wrong) + ' records'}; run "
            f"'{run}' was trained with task={task} and is scored on rows of the same kind with their labels."
        )
    try:
        items = [encode(ex, tokenizer, task, names, tokenizer.model_max_length) for ex in examples]
    except ValueError as exc:
        raise DataError(f"'{data_file}': a row cannot be scored: {exc}.") from None
    device, pad = next(model.parameters()).device, pad_id(tokenizer)
    metrics = validation_metrics(TrainingModule(model, OBJECTIVE), items, batch_size, pad, device, False)
    metrics.update(scores(model, items, batch_size, pad, device))
    scored = classifier_rows(model, items, batch_size, pad, device)
    if scored is None:  # token classification: its scores are per word, not per row
        predicted = predict(model, items, batch_size, pad, device)
        scored = [{"prediction": shown(p, task, names)} for p in predicted]
    own = ("origin", "label")
    rows = [{"origin": ex.origin, "text": ex.text, "label": ex.label, **{k: v for k, v in r.items() if k not in own}}
            for ex, r in zip(examples, scored, strict=True)]  # fmt: skip
    metrics.update(classifier_metrics(rows, names))
    return metrics, rows


def classifier_rows(
    model: nn.Module, items: list[ClassItem], batch_size: int, pad: int, device: torch.device, bf16: bool = False
) -> list[dict[str, Any]] | None:
    """One scored row per item of a single-head sequence model: origin, label, prediction, and `accuracy` (0/1)
    with `confidence` (the top class's probability) for a classifier, `squared_error` and `abs_error` for
    regression. None for any other model (token tags, task heads, a language model) or items that are not labelled
    rows (a reward model's preference pairs), which have no such rows."""
    if not isinstance(model, TaskModel) or model.cfg.task != "sequence":
        return None
    if not all(isinstance(item, ClassItem) for item in items):  # a reward model's items are preference pairs
        return None
    task, names = task_of(model.cfg), model.cfg.labels
    rows = []
    if task == "regression":
        for item, p in zip(items, predict(model, items, batch_size, pad, device, bf16), strict=True):
            error = float(p) - float(cast(float, item.target))
            rows.append({"origin": item.origin, "label": item.target, "prediction": p,
                         "squared_error": error * error, "abs_error": abs(error)})  # fmt: skip
        return rows
    probabilities = class_probabilities(model, items, batch_size, pad, device, bf16)
    for item, row in zip(items, probabilities, strict=True):
        p = int(row.argmax())
        rows.append({"origin": item.origin, "label": shown(item.target, task, names),
                     "prediction": shown(p, task, names), "accuracy": float(p == item.target),
                     "confidence": float(row.max())})  # fmt: skip
    return rows


@torch.no_grad()
def class_probabilities(
    model: TaskModel, items: list[ClassItem], batch_size: int, pad: int, device: torch.device, bf16: bool = False
) -> torch.Tensor:
    """(rows, classes) softmax probabilities of a sequence classifier, in fp32 on the CPU."""
    out = []
    with eval_mode(model):
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in collate_items(items[start : start + batch_size], pad).items()}
            with autocast(device, bf16):
                logits = model(batch["input_ids"], batch["attention_mask"])
            out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out)


def classifier_metrics(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, float]:
    """macro_precision, macro_recall and ece of a classifier's scored rows (macro-F1 is val_macro_f1 already);
    empty for rows without confidences (regression, token tags)."""
    if not rows or "confidence" not in rows[0]:
        return {}
    report, bins = classifier_report(rows, labels)
    return {**{k: v for k, v in report.metrics.items() if k != "macro_f1"}, "ece": bins.ece}


def classifier_report(rows: list[dict[str, Any]], labels: list[str]) -> tuple[LabelReport, Reliability]:
    """A classifier's confusion matrix and per-class scores, and its reliability bins, from its scored rows."""
    gold, predicted = [str(r["label"]) for r in rows], [str(r["prediction"]) for r in rows]
    report = label_report(gold, predicted, labels or sorted({*gold, *predicted}))
    confidence = np.array([r["confidence"] for r in rows])
    return report, reliability(confidence, np.array([r["accuracy"] for r in rows]))


def _evaluate_task_heads(
    model: MultiHeadModel, tokenizer: PreTrainedTokenizerBase, run: str | Path, data_file: str | Path, batch_size: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A task-heads run scored on a labelled file: every row through its task's head. Loss and accuracy overall
    and per task (`val_acc/<task>` when the file holds several), each task's scores, and one prediction per row."""
    examples = load_examples([str(data_file)]).examples
    if not examples:
        raise DataError(f"'{data_file}' holds no usable rows; run '{run}' is scored on labelled rows of its tasks.")
    unknown = sorted({ex.task for ex in examples} - set(model.tasks))
    if unknown:
        raise DataError(
            f"'{data_file}': rows of task(s) {', '.join(map(repr, unknown))}, for which run '{run}' has no head (its "
            f"tasks: {', '.join(model.tasks)}). A row's task is the file's stem or its `task` field: name the file "
            "after its task (<task>.jsonl) or give each row a `task` field."
        )
    tasks: dict[str, Task] = {tag: task_of(model.cfgs[tag]) for tag in model.tasks}
    items = []
    for ex in examples:
        task = tasks[ex.task]
        if ex.kind != KIND.get(task, "token_classification"):
            raise DataError(f"{ex.origin}: a {ex.kind} record, but task '{ex.task}' was trained with task={task}.")
        try:
            item = encode(ex, tokenizer, task, model.cfgs[ex.task].labels, tokenizer.model_max_length)
        except ValueError as exc:
            raise DataError(f"'{data_file}': a row cannot be scored: {exc}.") from None
        item.head = model.index(ex.task)
        items.append(item)
    device, pad = next(model.parameters()).device, pad_id(tokenizer)
    metrics = validation_metrics(TrainingModule(model, OBJECTIVE), items, batch_size, pad, device, False)
    metrics.update(task_scores(model, items, batch_size, pad, device, False))
    predicted: list[Any] = [None] * len(items)
    for tag in model.tasks:
        where = [k for k, ex in enumerate(examples) if ex.task == tag]
        found = predict(model.view(tag), [items[k] for k in where], batch_size, pad, device) if where else []
        for k, p in zip(where, found, strict=True):
            predicted[k] = shown(p, tasks[tag], model.cfgs[tag].labels)
    rows = [{"origin": ex.origin, "task": ex.task, "text": ex.text, "label": ex.label, "prediction": p}
            for ex, p in zip(examples, predicted, strict=True)]  # fmt: skip
    return metrics, rows
