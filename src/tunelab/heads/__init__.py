"""Task heads: sequence classification/regression and token classification on any body and any method."""

from __future__ import annotations

from tunelab.heads.config import HeadConfig
from tunelab.heads.data import align_word_labels
from tunelab.heads.losses import IGNORE, sequence_loss, token_loss
from tunelab.heads.model import TaskModel, attach_head_, load_head_, save_head, task_loss

__all__ = [
    "IGNORE",
    "HeadConfig",
    "TaskModel",
    "align_word_labels",
    "attach_head_",
    "load_head_",
    "save_head",
    "sequence_loss",
    "task_loss",
    "token_loss",
]
