"""The `classify` objective: a task head on the (method-adapted) body, trained on labelled records.

Sequence classification and regression read `classification` records (`text`, optional `text_pair`, `label`);
token classification reads `token_classification` records (`tokens` and one tag per token, e.g. BIO tags for
NER). The head always trains in full whatever the method does to the body, so `method: lora` gives a LoRA body
with a full head, and both count as trainable. The head and its label names are saved next to the method's
result (head_config.json, head.safetensors); `load_classifier` puts them back together. With `task_heads` every
task (file stem or row `task` field) gets its own head and labels on the shared body (objectives/classify_tasks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError, RunError
from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.records import Example, Reject
from tunelab.data.tokenize import IGNORE
from tunelab.objectives.base import Objective, SetupArgs
from tunelab.objectives.classify.config import TaskHeadConfig
from tunelab.objectives.classify.data import (
    ClassItem,
    collate_items,
    count_targets,
    encode_sequence,
    encode_tagged,
    label_names,
)
from tunelab.objectives.classify.metrics import entity_f1, is_bio, macro_f1

if TYPE_CHECKING:  # heads.model imports objectives.base, so it is imported when used, not at import
    from tunelab.config import TunelabConfig
    from tunelab.data.pipeline import PreparedData
    from tunelab.objectives.classify.config import HeadConfig
    from tunelab.objectives.classify.heads import TaskModel
    from tunelab.objectives.classify.multi import MultiHeadModel

Task = Literal["sequence_classification", "regression", "token_classification"]


class ClassifyConfig(Section):
    name: Literal["classify"] = "classify"
    task: Task = "sequence_classification"
    """`sequence_classification`: one class per example (cross-entropy). `regression`: one number per example
    (mean squared error; the label is the number). `token_classification`: one tag per word (NER-style BIO)."""
    pooling: Literal["auto", "last", "cls", "mean"] = "auto"
    """How a sequence task turns token states into one vector: `last` (the last real token; decoders, where only
    it has seen the whole input), `cls` (the first token, BERT's [CLS]), `mean` (the average of real tokens, as
    sentence encoders like minilm-l6 are trained). `auto`: last for decoders, mean for encoders."""
    labels: list[str] = []
    """Class (or tag) names in label-id order. Empty: every label found in the training and validation data,
    sorted (numbers numerically, names alphabetically, the tag O first). Given: a data label outside it is an error."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the pooled (or per-token) vector before the head, while training."""
    task_heads: bool = False
    """One head per task on one shared body: each task (a file's stem, or a row's `task` field) gets its own head
    and label set, each row trains and is scored through its task's head, and the task losses add up (weighted by
    training.task_weights / task_weighting). Validation reports accuracy and macro-F1 per task. Off: one head."""
    tasks: dict[str, TaskHeadConfig] = {}
    """With task_heads: one task's own settings by task tag (`task`, `labels`), e.g. {stsb: {task: regression}};
    a task left out takes objective.task and the labels of its rows."""

    @model_validator(mode="after")
    def _labels_fit(self) -> ClassifyConfig:
        if self.tasks and not self.task_heads:
            raise ValueError("objective.tasks sets per-task heads; add objective.task_heads: true (or remove tasks)")
        if self.task_heads and self.labels:
            raise ValueError("with task_heads each task has its own labels: give them as objective.tasks.<task>.labels")
        if self.task == "regression" and self.labels:
            raise ValueError("objective.labels names classes, which regression does not have; remove it")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"objective.labels repeats a name: {self.labels}")
        return self


KIND = {"sequence_classification": "classification", "regression": "classification"}
NEED = {"classification": "'text' and 'label'", "token_classification": "'tokens' and 'tags' (one tag per token)"}
SPLITS = ("train", "validation")


def prepare_classify(cfg: TunelabConfig, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> PreparedData:
    """Labelled records of the kind the task needs, tokenized as `ClassItem`s. The label names, in id order, go in
    the report as `labels` (the head's setup reads them there); with task heads, each task's task and labels go
    there as `task_heads`, and each item carries its head's index."""
    from tunelab.data.pipeline import PreparedData, prepare_dataset
    from tunelab.data.schedule import make_schedule

    ocfg: ClassifyConfig = cfg.objective
    prepared = prepare_dataset(cfg.data, tokenizer, cfg.training.seed, run_dir, batch_size=cfg.training.batch_size)
    records = {s: [Example.from_row(r) for r in prepared.table(f"{s}_records").to_pylist()] for s in SPLITS}
    if ocfg.task_heads:  # task tag -> (task, labels), in head order
        from tunelab.objectives.classify.tasks import plan_task_heads

        heads = plan_task_heads(ocfg, records)
    else:
        heads = {"": _single_head(ocfg, prepared.report["kinds"], records)}
    index = {tag: i for i, tag in enumerate(heads)}
    limit = min(cfg.data.max_length, tokenizer.model_max_length)
    items: dict[str, list[ClassItem]] = {}
    rejects: list[Reject] = []
    for split, recs in records.items():
        items[split] = []
        for ex in recs:
            tag = ex.task if ocfg.task_heads else ""
            try:
                items[split].append(encode(ex, tokenizer, *heads[tag], limit, cfg.data.truncation))
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
    schedule = make_schedule(cfg.data.schedule, items["train"])  # class balance and curriculum read ClassItems
    return PreparedData(items["train"], items["validation"], [], report, schedule)


def _single_head(ocfg: ClassifyConfig, kinds: dict[str, int], records: dict[str, list[Example]]) -> tuple[Task, list]:
    """(task, label names) of the one head, after checking the records are of the kind the task trains on."""
    kind = KIND.get(ocfg.task, "token_classification")
    if set(kinds) != {kind}:
        shown = ", ".join(f"{n} {k}" for k, n in kinds.items())
        raise DataError(
            f"The training data holds {shown} records, but objective 'classify' with task={ocfg.task} trains on "
            f"{kind} records only: rows with {NEED[kind]}. Give such files, or set objective.task to match the data."
        )
    found = [] if ocfg.task == "regression" else label_names(records["train"] + records["validation"], ocfg.task)
    names = ocfg.labels or found
    if ocfg.task != "regression" and len(names) < 2:
        raise DataError(f"objective 'classify' needs at least two classes; the data holds only {names}. Add rows.")
    return ocfg.task, names


def encode(
    example: Example, tokenizer: PreTrainedTokenizerBase, task: Task, names: list[str], max_length: int,
    truncation: str = "right",
) -> ClassItem:  # fmt: skip
    """One record as a `ClassItem`. A label outside `names` is a DataError (names come from the config or the
    data, so it is a mistake in one of them); what cannot be tokenized is a ValueError (the row is rejected)."""
    common = {"origin": example.origin, "task": example.task, "difficulty": example.meta.get("difficulty")}
    label = example.label or ""
    if task == "regression":
        try:
            target = float(label)
        except ValueError:
            raise DataError(f"{example.origin}: label {label!r} is not a number, as task=regression needs.") from None
        return ClassItem(encode_sequence(example, tokenizer, max_length, truncation), target, label, **common)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({x for x in (label.split(" ") if task == "token_classification" else [label]) if x not in index})
    if unknown:
        raise DataError(
            f"{example.origin}: label(s) {', '.join(map(repr, unknown))} are not among objective.labels "
            f"({', '.join(names)}). Add them to objective.labels (objective.tasks.<task>.labels with task_heads), "
            "or leave it empty to take the labels from the data."
        )
    if task == "token_classification":
        ids, labels = encode_tagged(example, tokenizer, max_length, [index[t] for t in label.split(" ")])
        return ClassItem(ids, labels, None, **common)
    return ClassItem(encode_sequence(example, tokenizer, max_length, truncation), index[label], label, **common)


def _setup(cfg: ClassifyConfig, args: SetupArgs) -> tuple[nn.Module, ClassifyConfig]:
    from tunelab.objectives.classify.heads import attach_head_
    from tunelab.objectives.classify.multi import attach_task_heads_

    if cfg.task_heads:
        planned = args.data.report["task_heads"]
        heads = {tag: head_config(cfg, p["task"], p["labels"]) for tag, p in planned.items()}
        return attach_task_heads_(args.model, heads, args.label_smoothing), cfg
    head = head_config(cfg, cfg.task, args.data.report.get("labels", cfg.labels))
    return attach_head_(args.model, head, args.label_smoothing), cfg


def head_config(cfg: ClassifyConfig, task: Task, names: list[str]) -> HeadConfig:
    """The head for `task` with label names `names` (pooling and dropout from the objective's settings)."""
    from tunelab.objectives.classify.config import HeadConfig

    return HeadConfig(
        task="token" if task == "token_classification" else "sequence",
        num_labels=1 if task == "regression" else len(names),
        problem="regression" if task == "regression" else "classification",
        pooling=cfg.pooling,
        dropout=cfg.dropout,
        labels=names,
    )


def classify_loss(model: TaskModel | MultiHeadModel, batch: Batch, ctx: Any = None) -> LossParts:
    """Cross-entropy (classes, tags) or squared error (regression), summed over examples or tagged words; under
    task heads each row through its own task's head (`batch['head']`)."""
    from tunelab.objectives.classify.heads import task_loss
    from tunelab.objectives.classify.multi import task_heads_loss

    return task_heads_loss(model, batch) if "head" in batch else task_loss(model, batch)


@torch.no_grad()
def predict(
    model: TaskModel, items: list[ClassItem], batch_size: int, pad_id: int, device: torch.device, bf16: bool = False
) -> list[Any]:
    """Per item: the predicted class id, the predicted number, or the predicted tag id of each tagged word."""
    from tunelab.core.device import autocast

    was_training = model.training
    model.eval()
    out: list[Any] = []
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
    model.train(was_training)
    return out


def scores(
    model: TaskModel | MultiHeadModel, items: list[ClassItem], batch_size: int, pad_id: int, device: torch.device,
    bf16: bool = False,
) -> dict[str, float]:  # fmt: skip
    """Regression: mse and mae. Classification: macro-F1. Token classification with BIO tags: entity F1 (exact
    spans). (Accuracy, and token accuracy for tags, come from the loss's running counts as `val_acc`.) Under task
    heads each task's own, as e.g. `val_macro_f1/<task>`."""
    from tunelab.objectives.classify.multi import MultiHeadModel

    if not items:
        return {}
    if isinstance(model, MultiHeadModel):
        from tunelab.objectives.classify.tasks import task_scores

        return task_scores(model, items, batch_size, pad_id, device, bf16)
    predicted = predict(model, items, batch_size, pad_id, device, bf16)
    if model.cfg.problem == "regression":
        errors = [p - i.target for p, i in zip(predicted, items, strict=True)]
        return {"val_mse": sum(e * e for e in errors) / len(errors), "val_mae": sum(map(abs, errors)) / len(errors)}
    if model.cfg.task == "token":
        names = model.cfg.labels
        if not (names and is_bio(names)):
            return {}
        gold = [[names[t] for t in i.target if t != IGNORE] for i in items]
        return {"val_entity_f1": entity_f1([[names[t] for t in p] for p in predicted], gold)}
    return {"val_macro_f1": macro_f1(predicted, [i.target for i in items], model.cfg.num_labels)}


def _save_head(model: TaskModel | MultiHeadModel, folder: Path) -> None:
    from tunelab.objectives.classify.heads import save_head
    from tunelab.objectives.classify.multi import MultiHeadModel, save_task_heads

    (save_task_heads if isinstance(model, MultiHeadModel) else save_head)(model, folder)


def load_classifier(
    run: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[TaskModel | MultiHeadModel, PreTrainedTokenizerBase]:
    """A run trained with objective `classify`: its body (base + the method's result) with the saved head, or
    with its task heads (a `MultiHeadModel`) when it trained with objective.task_heads."""
    from tunelab.objectives.classify.heads import CONFIG_FILE, load_head_
    from tunelab.objectives.classify.multi import TASKS_FILE, load_task_heads_
    from tunelab.recipes.runs import artifact_dir, load_for_inference, run_config

    folder = artifact_dir(Path(run), run_config(Path(run)).method.name)
    multi = (folder / TASKS_FILE).is_file()
    if not multi and not (folder / CONFIG_FILE).is_file():
        raise RunError(
            f"'{run}' holds no task head ({folder / CONFIG_FILE} is missing): it was not trained with objective "
            "classify. Give a run folder trained with a head."
        )
    body, tokenizer = load_for_inference(str(run), dtype=dtype)
    return (load_task_heads_(body, folder) if multi else load_head_(body, folder)), tokenizer


def evaluate_file(
    run: str | Path, data_file: str | Path, batch_size: int = 16
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A classify run scored on a labelled file (rows of the kind it trained on): the validation metrics of
    training (loss, accuracy, macro-F1 / entity F1 / MSE) and one prediction per row. A run with task heads scores
    each row by the head of its task (file stem or `task` field) and reports each task's metrics."""
    from tunelab.data.load import load_examples
    from tunelab.recipes.runs import run_config
    from tunelab.train.loop import TrainingModule, validation_metrics

    if run_config(Path(run)).objective.task_heads:
        from tunelab.objectives.classify.tasks import evaluate_task_file

        return evaluate_task_file(run, data_file, batch_size)
    task: Task = run_config(Path(run)).objective.task
    model, tokenizer = load_classifier(run)
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
    device, pad_id = next(model.parameters()).device, tokenizer.pad_token_id
    metrics = validation_metrics(TrainingModule(model, OBJECTIVE), items, batch_size, pad_id, device, False)
    metrics.update(scores(model, items, batch_size, pad_id, device))
    predicted = predict(model, items, batch_size, pad_id, device)
    rows = [{"origin": ex.origin, "text": ex.text, "label": ex.label, "prediction": shown(p, task, names)}
            for ex, p in zip(examples, predicted, strict=True)]  # fmt: skip
    return metrics, rows


def shown(predicted: Any, task: Task, names: list[str]) -> Any:
    """A prediction as the data writes labels: the number, the class name, or the tag name of each word."""
    if task == "regression":
        return predicted
    return [names[t] for t in predicted] if isinstance(predicted, list) else names[predicted]


def _length(item: ClassItem) -> int:
    return len(item.input_ids)


OBJECTIVE = Objective(
    name="classify",
    loss=classify_loss,
    config=ClassifyConfig,
    prepare=prepare_classify,
    setup=_setup,
    collate=collate_items,
    length=_length,
    count=count_targets,
    metric="acc",
    perplexity=False,
    body=lambda model: model.model,
    save_extra=_save_head,
    scores=scores,
)
