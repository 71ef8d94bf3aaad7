"""Objective `classify` with `task_heads`: a shared body with one head per task, each with its own label set.

Tasks are found in the data: a row's task is its file's stem, or its own `task` field. Each task's head predicts
what `objective.tasks.<task>.task` says (default `objective.task`), over the labels that task's rows hold (or
`objective.tasks.<task>.labels`). Rows carry their head's index (`ClassItem.head`); the heads themselves live in
heads/multi.py. Validation rows must belong to a task that has training rows, since only those get a head.
"""

from __future__ import annotations

from tunelab.core.errors import ConfigError, DataError, did_you_mean
from tunelab.data.records import Example
from tunelab.objectives.classify.config import KIND, NEED, ClassifyConfig, Task
from tunelab.objectives.classify.data import label_names


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
    kinds: dict[str, Task] = {tag: task_kind(ocfg, tag) for tag in tasks}
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


def task_kind(ocfg: ClassifyConfig, tag: str) -> Task:
    """What task `tag`'s head predicts: its own `objective.tasks.<tag>.task`, else `objective.task`."""
    own = ocfg.tasks[tag].task if tag in ocfg.tasks else None
    return own or ocfg.task


def own_labels(ocfg: ClassifyConfig, tag: str) -> list[str]:
    return ocfg.tasks[tag].labels if tag in ocfg.tasks else []
