"""One shared body with a head per task: multi-task classification (and regression) where every task keeps its
own label set.

The body runs once per batch; each row's pooled vector (or per-token states) goes to the head of its task, so a
batch may mix tasks. Each head is a `HeadConfig` like a single-task head, with its own number of labels and label
names; pooling and dropout belong to the body and are shared. Rows of one task compute that task's loss only, and
the parts add up, so without task weighting the loss is the sum over every row as in a single-head run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.core.errors import ConfigError, RunError
from tunelab.core.types import LossParts
from tunelab.models.parts import is_decoder
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.heads import body_embeddings, body_features, check_head_body, resolved_pooling
from tunelab.objectives.classify.losses import sequence_loss, token_loss

TASKS_FILE = "task_heads.json"
TASKS_WEIGHTS_FILE = "task_heads.safetensors"


class MultiHeadModel(nn.Module):
    """`model` (the shared body, adapted or not) + `head[i]`, one linear head per task, in the order of `tasks`.
    forward(input_ids, attention_mask, task) -> that task's logits for every row."""

    def __init__(self, model: nn.Module, cfgs: dict[str, HeadConfig], label_smoothing: float = 0.0) -> None:
        super().__init__()
        first = next(iter(cfgs.values()))
        if any((c.task, c.pooling, c.dropout) != (first.task, first.pooling, first.dropout) for c in cfgs.values()):
            raise ValueError("task heads share the body: every head needs the same task kind, pooling and dropout")
        self.model = model
        self.cfgs = dict(cfgs)
        self.tasks = list(cfgs)
        """Task tags in head order: `head[i]` serves `tasks[i]`, and batches carry that index as `head`."""
        self.label_smoothing = label_smoothing
        self.decoder = is_decoder(model)
        self.pooling = resolved_pooling(first.pooling, self.decoder)
        self.token = first.task == "token"
        hidden = body_embeddings(model).embedding_dim
        device = next(model.parameters()).device
        self.dropout = nn.Dropout(first.dropout)
        # A ModuleList (not a dict by task tag): tags are file stems or row fields and may hold dots. Named `head`
        # like a single head, so training.head_lr and layer-wise learning rates treat every head as the top.
        self.head = nn.ModuleList(nn.Linear(hidden, c.num_labels) for c in cfgs.values()).to(device)

    def get_input_embeddings(self) -> nn.Module:
        return body_embeddings(self.model)

    def get_output_embeddings(self) -> None:
        """The language-model head is not used under task heads."""
        return None

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What every head reads: the pooled vector per row (B x H), or the token states (B x T x H)."""
        hidden = body_features(self.model, input_ids, attention_mask, self.pooling, self.token)
        return self.dropout(hidden.to(cast(nn.Linear, self.head[0]).weight.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str | int) -> torch.Tensor:
        index = task if isinstance(task, int) else self.index(task)
        return self.head[index](self.features(input_ids, attention_mask))

    def index(self, task: str) -> int:
        if task not in self.cfgs:
            raise ConfigError(f"No head for task '{task}': this model's task heads are {', '.join(self.tasks)}.")
        return self.tasks.index(task)

    def view(self, task: str) -> TaskView:
        """Task `task`'s head on the shared body, used like a single-head `TaskModel`."""
        return TaskView(self, task)


class TaskView(nn.Module):
    """One task of a `MultiHeadModel`, shaped like a `TaskModel`: `cfg`, `head`, forward(input_ids, mask)."""

    def __init__(self, owner: MultiHeadModel, task: str) -> None:
        super().__init__()
        self.owner = owner
        self.task = task
        self.cfg = owner.cfgs[task]
        self.head = owner.head[owner.index(task)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.owner(input_ids, attention_mask, self.task)


def attach_task_heads_(model: nn.Module, cfgs: dict[str, HeadConfig], label_smoothing: float = 0.0) -> MultiHeadModel:
    """Put fresh heads, one per task, on `model` (after the method was applied to it). The heads train in full."""
    check_head_body(model)
    return MultiHeadModel(model, cfgs, label_smoothing)


def head_parts(cfg: HeadConfig, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> LossParts:
    """One head's loss on its rows. Batches of mixed tasks carry class ids as floats when a regression task is
    among them (one label tensor per batch); ids are exact in float32, so they are cast back here."""
    if cfg.task == "token":
        return token_loss(logits, labels.long(), smoothing)
    if cfg.problem == "regression":
        return sequence_loss(logits, labels, regression=True)
    return sequence_loss(logits, labels.long(), label_smoothing=smoothing)


def task_heads_loss(model: MultiHeadModel, batch: dict[str, torch.Tensor]) -> LossParts:
    """The summed loss of every row through its own task's head (`batch['head']`: each row's head index); one
    body forward for the whole batch. Label smoothing applies while training only, as with a single head."""
    features = model.features(batch["input_ids"], batch["attention_mask"])
    smoothing = model.label_smoothing if model.training else 0.0
    parts = []
    for t in batch["head"].unique().tolist():
        rows = (batch["head"] == t).nonzero().squeeze(1)
        logits = model.head[t](features[rows])
        parts.append(head_parts(model.cfgs[model.tasks[t]], logits, batch["labels"][rows], smoothing))
    return LossParts(
        loss_sum=torch.stack([p.loss_sum for p in parts]).sum(),
        count=torch.stack([p.count for p in parts]).sum(),
        correct=torch.stack([p.correct for p in parts]).sum(),
    )


def save_task_heads(model: MultiHeadModel, out: Path) -> None:
    """task_heads.json (each task's head config and label names, in head order) + task_heads.safetensors (head i's
    weights as `i.weight`, `i.bias`), next to whatever the method saved for the body."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = [{"task": t, "config": c.model_dump()} for t, c in model.cfgs.items()]
    meta = {"tasks": tasks, "hidden_size": model.head[0].in_features}
    (out / TASKS_FILE).write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
    save_file(state, str(out / TASKS_WEIGHTS_FILE), metadata={"format": "pt"})


def load_task_heads_(model: nn.Module, folder: Path) -> MultiHeadModel:
    """Wrap a loaded body (base + the method's saved result) with the saved task heads, for inference."""
    meta = json.loads((folder / TASKS_FILE).read_text())
    cfgs = {entry["task"]: HeadConfig(**entry["config"]) for entry in meta["tasks"]}
    multi = MultiHeadModel(model, cfgs)
    if multi.head[0].in_features != meta["hidden_size"]:
        raise RunError(
            f"{folder}: the task heads expect hidden size {meta['hidden_size']}, but the body has "
            f"{multi.head[0].in_features}. Load them onto the base model of the run that trained them."
        )
    multi.head.load_state_dict(load_file(folder / TASKS_WEIGHTS_FILE))
    return multi.eval()
