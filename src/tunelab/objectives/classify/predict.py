"""A classifier's predictions and the scores that need all of them (macro-F1, entity F1, MSE), for one head or a
head per task, and a finished classify run loaded back for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from tunelab.core.device import autocast, eval_mode
from tunelab.core.errors import RunError
from tunelab.data.tokenize import IGNORE
from tunelab.methods.trained import load_trained, read_run
from tunelab.objectives.classify.config import Task
from tunelab.objectives.classify.data import ClassItem, collate_items
from tunelab.objectives.classify.heads import CONFIG_FILE, TaskModel, load_head_
from tunelab.objectives.classify.metrics import entity_f1, is_bio, macro_f1
from tunelab.objectives.classify.multi import (
    TASKS_FILE,
    MultiHeadModel,
    TaskView,
    load_task_heads_,
)


@torch.no_grad()
def predict(
    model: TaskModel | TaskView,
    items: list[ClassItem],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    bf16: bool = False,
) -> list[Any]:
    """Per item: the predicted class id, the predicted number, or the predicted tag id of each tagged word."""
    out: list[Any] = []
    with eval_mode(model):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_items(chunk, pad_id).items()}
            with autocast(device, bf16):
                logits = model(batch["input_ids"], batch["attention_mask"]).float()
            if model.cfg.problem == "regression":
                out += logits.squeeze(-1).tolist()
            elif model.cfg.task == "token":
                keep = batch["labels"] != IGNORE
                out += [row[k].tolist() for row, k in zip(logits.argmax(-1), keep, strict=True)]
            else:
                out += logits.argmax(-1).tolist()
    return out


def scores(
    model: TaskModel | TaskView | MultiHeadModel, items: list[ClassItem], batch_size: int, pad_id: int,
    device: torch.device, bf16: bool = False,
) -> dict[str, float]:  # fmt: skip
    """Regression: mse and mae. Classification: macro-F1. Token classification with BIO tags: entity F1 (exact
    spans). (Accuracy, and token accuracy for tags, come from the loss's running counts as `val_acc`.) Under task
    heads each task's own, as e.g. `val_macro_f1/<task>`."""
    if not items:
        return {}
    if isinstance(model, MultiHeadModel):
        return task_scores(model, items, batch_size, pad_id, device, bf16)
    predicted = predict(model, items, batch_size, pad_id, device, bf16)
    if model.cfg.problem == "regression":
        errors = [p - i.target for p, i in zip(predicted, items, strict=True)]
        return {"val_mse": sum(e * e for e in errors) / len(errors), "val_mae": sum(map(abs, errors)) / len(errors)}
    if model.cfg.task == "token":
        names = model.cfg.labels
        if not (names and is_bio(names)):
            return {}
        gold = [[names[t] for t in cast(list[int], i.target) if t != IGNORE] for i in items]  # tag ids per token
        return {"val_entity_f1": entity_f1([[names[t] for t in p] for p in predicted], gold)}
    gold_ids = [cast(int, i.target) for i in items]  # class ids: the task is classification
    return {"val_macro_f1": macro_f1(predicted, gold_ids, model.cfg.num_labels)}


def task_scores(
    model: MultiHeadModel, items: list[ClassItem], batch_size: int, pad_id: int, device: torch.device, bf16: bool
) -> dict[str, float]:
    """Each task's scores through its own head (macro-F1, MSE, entity F1), named `<metric>/<task>`."""
    out: dict[str, float] = {}
    for head, tag in enumerate(model.tasks):
        own = [i for i in items if i.head == head]
        if own:
            view = model.view(tag)
            out.update({f"{k}/{tag}": v for k, v in scores(view, own, batch_size, pad_id, device, bf16).items()})
    return out


def shown(predicted: Any, task: Task, names: list[str]) -> Any:
    """A prediction as the data writes labels: the number, the class name, or the tag name of each word."""
    if task == "regression":
        return predicted
    return [names[t] for t in predicted] if isinstance(predicted, list) else names[predicted]


def load_classifier(
    run: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[TaskModel | MultiHeadModel, PreTrainedTokenizerBase]:
    """A run trained with objective `classify`: its body (base + the method's result) with the saved head, or
    with its task heads (a `MultiHeadModel`) when it trained with objective.task_heads."""
    folder = read_run(run).artifact
    multi = (folder / TASKS_FILE).is_file()
    if not multi and not (folder / CONFIG_FILE).is_file():
        raise RunError(
            f"'{run}' holds no task head ({folder / CONFIG_FILE} is missing): it was not trained with objective "
            "classify. Give a run folder trained with a head."
        )
    body, tokenizer = load_trained(str(run), dtype=dtype)
    return (load_task_heads_(body, folder) if multi else load_head_(body, folder)), tokenizer
