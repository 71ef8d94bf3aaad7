"""The `classify` objective's section, and the head section: what a head predicts and how a sequence is pooled."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.core.schema import Section


class HeadConfig(Section):
    task: Literal["sequence", "token"] = "sequence"
    """`sequence`: one prediction per example (classification or regression). `token`: one label per token
    (NER-style BIO tags)."""
    num_labels: int = Field(default=2, ge=1)
    """Number of classes (1 for regression)."""
    problem: Literal["classification", "regression"] = "classification"
    """Sequence heads: cross-entropy over `num_labels` classes, or mean-squared error on one number."""
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    """How a sequence becomes one vector. `last`: the last real token (decoders: only it has seen the whole
    input); `mean`: the average of real tokens (sentence encoders such as MiniLM); `cls`: the first token (BERT's
    [CLS]). `auto`: last for decoders, mean for encoders."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the pooled (or per-token) vector before the head."""
    labels: list[str] = []
    """Optional class names, in label-id order (e.g. [O, B-PER, I-PER]); when given, their count is num_labels."""

    @model_validator(mode="after")
    def _consistent(self) -> HeadConfig:
        if self.problem == "regression" and (self.task != "sequence" or self.num_labels != 1):
            raise ValueError("regression needs task=sequence and num_labels=1 (one number per example)")
        if self.labels and len(self.labels) != self.num_labels:
            raise ValueError(f"labels names {len(self.labels)} classes but num_labels is {self.num_labels}")
        return self


class TaskHeadConfig(Section):
    """One task's own head settings under `objective.task_heads` (objective.tasks.<task tag>)."""

    task: Literal["sequence_classification", "regression", "token_classification"] | None = None
    """What this task's head predicts (as objective.task); empty: objective.task. Sequence tasks (classification
    and regression) mix freely; token classification mixes only with other token-classification tasks."""
    labels: list[str] = []
    """This task's class (or tag) names in label-id order. Empty: the labels of this task's training and
    validation rows, sorted (numbers numerically, names alphabetically, the tag O first)."""

    @model_validator(mode="after")
    def _labels_fit(self) -> TaskHeadConfig:
        if self.task == "regression" and self.labels:
            raise ValueError("a regression task has no classes, so no labels; remove them")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeats a name: {self.labels}")
        return self


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
    dropout: float = Field(default=0.0, ge=0, lt=1)
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


def head_config(cfg: ClassifyConfig, task: Task, names: list[str]) -> HeadConfig:
    """The head for `task` with label names `names` (pooling and dropout from the objective's settings)."""
    return HeadConfig(
        task="token" if task == "token_classification" else "sequence",
        num_labels=1 if task == "regression" else len(names),
        problem="regression" if task == "regression" else "classification",
        pooling=cfg.pooling,
        dropout=cfg.dropout,
        labels=names,
    )


def task_of(cfg: HeadConfig) -> Task:
    """The objective's task name for a (saved) head config."""
    if cfg.task == "token":
        return "token_classification"
    return "regression" if cfg.problem == "regression" else "sequence_classification"
