"""The `classify` objective: a task head on the (method-adapted) body, trained on labelled records.

Sequence classification and regression read `classification` records (`text`, optional `text_pair`, `label`);
token classification reads `token_classification` records (`tokens` and one tag per token, e.g. BIO tags for
NER). The head always trains in full whatever the method does to the body, so `method: lora` gives a LoRA body
with a full head, and both count as trainable. The head and its label names are saved next to the method's
result (head_config.json, head.safetensors); `load_classifier` puts them back together. With `task_heads` every
task (file stem or row `task` field) gets its own head and labels on the shared body (`tasks.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.core.errors import DataError
from tunelab.core.types import Batch, LossParts
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example, Reject
from tunelab.data.schedule import make_schedule
from tunelab.objectives.base import Objective, PrepareArgs, Setup, SetupArgs, require_kind
from tunelab.objectives.classify.config import KIND, NEED, ClassifyConfig, Task, head_config
from tunelab.objectives.classify.data import ClassItem, collate_items, count_targets, encode, item_length, label_names
from tunelab.objectives.classify.heads import TaskModel, attach_head_, save_head, task_loss
from tunelab.objectives.classify.multi import MultiHeadModel, attach_task_heads_, save_task_heads, task_heads_loss
from tunelab.objectives.classify.predict import scores
from tunelab.objectives.classify.tasks import plan_task_heads

SPLITS = ("train", "validation")


def prepare_classify(args: PrepareArgs[ClassifyConfig]) -> PreparedData:
    """Labelled records of the kind the task needs, tokenized as `ClassItem`s. The label names, in id order, go in
    the report as `labels` (the head's setup reads them there); with task heads, each task's task and labels go
    there as `task_heads`, and each item carries its head's index."""
    ocfg, tokenizer = args.objective, args.tokenizer
    prepared = args.dataset()
    records = {s: [Example.from_row(r) for r in prepared.table(f"{s}_records").to_pylist()] for s in SPLITS}
    if ocfg.task_heads:  # task tag -> (task, labels), in head order
        heads = plan_task_heads(ocfg, records)
    else:
        heads = {"": _single_head(ocfg, prepared.report["kinds"], records)}
    index = {tag: i for i, tag in enumerate(heads)}
    limit = min(args.data.max_length, tokenizer.model_max_length)
    items: dict[str, list[ClassItem]] = {}
    rejects: list[Reject] = []
    for split, recs in records.items():
        items[split] = []
        for ex in recs:
            tag = ex.task if ocfg.task_heads else ""
            try:
                items[split].append(encode(ex, tokenizer, *heads[tag], limit, args.data.truncation))
            except ValueError as exc:
                rejects.append(Reject(origin=ex.origin, reason=str(exc), row=ex.text[:200], stage="tokenize"))
                continue
            if ocfg.task_heads:
                items[split][-1].head = index[tag]
    report = {**prepared.report, "train_examples": len(items["train"]), "val_examples": len(items["validation"])}
    if ocfg.task_heads:
        report["task_heads"] = {tag: {"task": task, "labels": names} for tag, (task, names) in heads.items()}
    else:
        report["labels"] = heads[""][1]
    report["rejected"] = report.get("rejected", 0) + len(rejects)
    report["classify_rejects"] = [r.to_json() for r in rejects[:20]]
    train, val = items["train"], items["validation"]
    schedule = make_schedule(args.data.schedule, train)  # class balance and curriculum read ClassItems
    return PreparedData(train, val, [], report, schedule)


def _single_head(ocfg: ClassifyConfig, kinds: dict[str, int], records: dict[str, list[Example]]) -> tuple[Task, list]:
    """(task, label names) of the one head, after checking the records are of the kind the task trains on."""
    kind = KIND.get(ocfg.task, "token_classification")
    require_kind(
        kinds, kind, "classify", f"{kind} records only: rows with {NEED[kind]}",
        instead="set objective.task to match the data", settings=f" with task={ocfg.task}",
    )  # fmt: skip
    found = [] if ocfg.task == "regression" else label_names(records["train"] + records["validation"], ocfg.task)
    names = ocfg.labels or found
    if ocfg.task != "regression" and len(names) < 2:
        raise DataError(f"objective 'classify' needs at least two classes; the data holds only {names}. Add rows.")
    return ocfg.task, names


def _setup(cfg: ClassifyConfig, args: SetupArgs) -> Setup[None]:
    module: TaskModel | MultiHeadModel
    if cfg.task_heads:
        planned = args.data.report["task_heads"]
        heads = {tag: head_config(cfg, p["task"], p["labels"]) for tag, p in planned.items()}
        module = attach_task_heads_(args.model, heads, args.label_smoothing)
    else:
        head = head_config(cfg, cfg.task, args.data.report.get("labels", cfg.labels))
        module = attach_head_(args.model, head, args.label_smoothing)
    return Setup(module, None, head=module.head)


def classify_loss(model: nn.Module, batch: Batch, ctx: Any = None) -> LossParts:
    """Cross-entropy (classes, tags) or squared error (regression), summed over examples or tagged words; under
    task heads each row through its own task's head (`batch['head']`)."""
    if isinstance(model, MultiHeadModel):
        return task_heads_loss(model, batch)
    assert isinstance(model, TaskModel)
    return task_loss(model, batch)


def _body(model: nn.Module) -> nn.Module:
    assert isinstance(model, TaskModel | MultiHeadModel)
    return model.model


def _scores(
    model: nn.Module, items: list[Any], batch_size: int, pad_id: int, device: torch.device, bf16: bool
) -> dict[str, float]:
    assert isinstance(model, TaskModel | MultiHeadModel)
    return scores(model, items, batch_size, pad_id, device, bf16)


def _save_head(model: nn.Module, ctx: Any, folder: Path) -> None:
    if isinstance(model, MultiHeadModel):
        save_task_heads(model, folder)
    else:
        assert isinstance(model, TaskModel)
        save_head(model, folder)


OBJECTIVE = Objective(
    name="classify",
    loss=classify_loss,
    config=ClassifyConfig,
    prepare=prepare_classify,
    setup=_setup,
    collate=collate_items,
    length=item_length,
    count=count_targets,
    metric="acc",
    perplexity=False,
    body=_body,
    save_extra=_save_head,
    scores=_scores,
)
