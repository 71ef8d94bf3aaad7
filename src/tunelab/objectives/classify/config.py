"""The task-head section: what the head predicts and how a sequence is pooled into one vector."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.core.schema import Section


class HeadConfig(Section):
    task: Literal["sequence", "token"] = "sequence"
    """`sequence`: one prediction per example (classification or regression). `token`: one label per token
    (NER-style BIO tags)."""
    num_labels: int = Field(2, ge=1)
    """Number of classes (1 for regression)."""
    problem: Literal["classification", "regression"] = "classification"
    """Sequence heads: cross-entropy over `num_labels` classes, or mean-squared error on one number."""
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    """How a sequence becomes one vector. `last`: the last real token (decoders: only it has seen the whole
    input); `mean`: the average of real tokens (sentence encoders such as MiniLM); `cls`: the first token (BERT's
    [CLS]). `auto`: last for decoders, mean for encoders."""
    dropout: float = Field(0.0, ge=0, lt=1)
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
