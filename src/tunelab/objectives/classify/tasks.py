"""Objective `classify` with `task_heads`: a shared body with one head per task, each with its own label set.

Tasks are found in the data: a row's task is its file's stem, or its own `task` field. Each task's head predicts
what `objective.tasks.<task>.task` says (default `objective.task`), over the labels that task's rows hold (or
`objective.tasks.<task>.labels`). Rows carry their head's index (`ClassItem.head`); the heads themselves live in
heads/multi.py. Validation rows must belong to a task that has training rows, since only those get a head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunelab.core.errors import ConfigError, DataError, did_you_mean
from tunelab.data.records import Example
from tunelab.objectives.classify.data import ClassItem, label_names
from tunelab.objectives.classify.objective import KIND, NEED, OBJECTIVE, ClassifyConfig, Task, encode, scores, shown

if TYPE_CHECKING:
    from tunelab.objectives.classify.multi import MultiHeadModel


def plan_task_heads(ocfg: ClassifyConfig, records: dict[str, list[Example]]) -> dict[str, tuple[Task, list[str]]]:
    """Task tag -> (what its head predicts, its label names), sorted by tag (the heads' order). Checks that every
    task's rows are of the kind its head trains on and that validation holds no task without training rows."""
    tasks = sorted({ex.task for ex in records["train"]})
    for tag in ocfg.tasks:
        if tag not in tasks:
            raise ConfigError(
                f"objective.tasks names task '{tag}', which no training row has.{did_you_mean(tag, tasks)} The tasks "
                f"are: {', '.join(tasks)} (a file's stem, or a row's `task` field)."
            )
    unseen = sorted({ex.task for ex in records["validation"]} - set(tasks))
    if unseen:
        first = next(ex for ex in records["validation"] if ex.task == unseen[0])
        raise DataError(
            f"Validation rows of task(s) {', '.join(map(repr, unseen))} (e.g. {first.origin}) have no training rows, "
            f"so no head is trained for them; the training tasks are {', '.join(tasks)}. A row's task is its file's "
            "stem or its `task` field: name the validation file after its training file (val/<task>.jsonl), give "
            "its rows a `task` field, or hold validation out of the training files with data.val_fraction."
        )
    kinds = {tag: (ocfg.tasks[tag].task if tag in ocfg.tasks and ocfg.tasks[tag].task else ocfg.task) for tag in tasks}
    tokens = sorted(tag for tag, task in kinds.items() if task == "token_classification")
    if tokens and len(tokens) < len(tasks):
        raise ConfigError(
            f"objective.task_heads: task(s) {', '.join(tokens)} tag tokens but the others label whole sequences; "
            "one body forward serves both only for the same kind. Train token-classification tasks in their own run, "
            "or set objective.tasks.<task>.task so that all tasks are sequence tasks (classification or regression)."
        )
    plan: dict[str, tuple[Task, list[str]]] = {}
    for tag in tasks:
        task = kinds[tag]
        own = [ex for split in records.values() for ex in split if ex.task == tag]
        wrong = next((ex for ex in own if ex.kind != KIND.get(task, "token_classification")), None)
        if wrong is not None:
            need = KIND.get(task, "token_classification")
            raise DataError(
                f"{wrong.origin}: task '{tag}' trains a {task} head on {need} records (rows with {NEED[need]}), but "
                f"this row is a {wrong.kind} record. Fix the row, or set objective.tasks.{tag}.task to match the data."
            )
        names = [] if task == "regression" else (own_labels(ocfg, tag) or label_names(own, task))
        if task != "regression" and len(names) < 2:
            raise DataError(f"Task '{tag}' needs at least two classes for its head; its rows hold only {names}.")
        plan[tag] = (task, names)
    return plan


def own_labels(ocfg: ClassifyConfig, tag: str) -> list[str]:
    return ocfg.tasks[tag].labels if tag in ocfg.tasks else []


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


def evaluate_task_file(
    run: str | Path, data_file: str | Path, batch_size: int = 16
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A task-heads run scored on a labelled file: every row through its task's head. Loss and accuracy overall
    and per task (`val_acc/<task>` when the file holds several), each task's scores, and one prediction per row."""
    from tunelab.data.load import load_examples
    from tunelab.objectives.classify.objective import load_classifier, predict
    from tunelab.train.loop import TrainingModule, validation_metrics

    model, tokenizer = load_classifier(run)
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
    tasks = {tag: _task_of(model.cfgs[tag]) for tag in model.tasks}
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
    device, pad_id = next(model.parameters()).device, tokenizer.pad_token_id
    metrics = validation_metrics(TrainingModule(model, OBJECTIVE), items, batch_size, pad_id, device, False)
    metrics.update(task_scores(model, items, batch_size, pad_id, device, False))
    predicted: list[Any] = [None] * len(items)
    for tag in model.tasks:
        where = [k for k, ex in enumerate(examples) if ex.task == tag]
        found = predict(model.view(tag), [items[k] for k in where], batch_size, pad_id, device) if where else []
        for k, p in zip(where, found, strict=True):
            predicted[k] = shown(p, tasks[tag], model.cfgs[tag].labels)
    rows = [{"origin": ex.origin, "task": ex.task, "text": ex.text, "label": ex.label, "prediction": p}
            for ex, p in zip(examples, predicted, strict=True)]  # fmt: skip
    return metrics, rows


def _task_of(cfg: Any) -> Task:
    """The objective's task name for a saved head config."""
    if cfg.task == "token":
        return "token_classification"
    return "regression" if cfg.problem == "regression" else "sequence_classification"
