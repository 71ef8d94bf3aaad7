"""A task head on any body: the (possibly adapted) language model or encoder gives hidden states, a linear head
maps them to labels.

Written here rather than loading `AutoModelForSequenceClassification`: the body is the model `models.load`
already returns, with whatever method was applied to it (LoRA, freeze, adapters, ...), so any method trains with
a head, and one pooling rule (from the attention mask) serves every architecture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.types import LossParts
from tunelab.models.parts import body, input_embeddings, is_decoder
from tunelab.models.pooling import POOLING
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.losses import sequence_loss, token_loss

CONFIG_FILE = "head_config.json"
WEIGHTS_FILE = "head.safetensors"


class TaskModel(nn.Module):
    """`model` (the body, adapted or not) + `head`. forward -> logits: B x labels, or B x T x labels for tokens."""

    def __init__(self, model: nn.Module, cfg: HeadConfig, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.label_smoothing = label_smoothing
        self.decoder = is_decoder(model)
        self.pooling = resolved_pooling(cfg.pooling, self.decoder)
        hidden = body_embeddings(model).embedding_dim
        device = next(model.parameters()).device
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(hidden, cfg.num_labels).to(device)  # fp32 and trainable, whatever the body is

    def get_input_embeddings(self) -> nn.Module:
        return body_embeddings(self.model)

    def get_output_embeddings(self) -> None:
        """The language-model head is not used under a task head (so layer-wise LR treats `head` as the top)."""
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = body_features(self.model, input_ids, attention_mask, self.pooling, self.cfg.task == "token")
        return self.head(self.dropout(hidden.to(self.head.weight.dtype)))


def body_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embeddings of `model`'s body, whose width is the width of the states a head reads."""
    return cast(nn.Embedding, input_embeddings(body(model)))


def resolved_pooling(pooling: str, decoder: bool) -> str:
    """`auto` pooling: the last token for a decoder (the only one that has seen the whole row), the mean otherwise."""
    return pooling if pooling != "auto" else ("last" if decoder else "mean")


def body_features(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str, per_token: bool
) -> torch.Tensor:
    """What a head reads from the body: each row's pooled state (B x H), or every token's state (B x T x H)."""
    hidden = body(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden if per_token else POOLING[pooling](hidden, attention_mask)


def attach_head_(model: nn.Module, cfg: HeadConfig, label_smoothing: float = 0.0) -> TaskModel:
    """Put a fresh head on `model` (after the method was applied to it). The head always trains in full."""
    check_head_body(model)
    return TaskModel(model, cfg, label_smoothing)


def check_head_body(model: nn.Module) -> None:
    """Refuse a body that a head cannot sit on."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        raise ConfigError(
            "A task head cannot sit on a prefix/prompt-tuned model: the virtual tokens exist only in the language "
            "model's full forward, which a head bypasses. Use lora, dora, ia3, adapter, freeze or full with a head."
        )


def task_loss(model: TaskModel, batch: dict[str, torch.Tensor]) -> LossParts:
    """The objective for a task head: `batch['labels']` is B (sequence) or B x T (token, IGNORE = -100). Label
    smoothing applies while training only, so validation loss stays the plain cross-entropy."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    smoothing = model.label_smoothing if model.training else 0.0
    if model.cfg.task == "token":
        return token_loss(logits, batch["labels"], smoothing)
    regression = model.cfg.problem == "regression"
    return sequence_loss(logits, batch["labels"], regression, smoothing)


def save_head(model: TaskModel, out: Path) -> None:
    """head_config.json + head.safetensors, next to whatever the method saved for the body."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": model.cfg.model_dump(), "hidden_size": model.head.in_features}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})


def load_head_(model: nn.Module, folder: Path) -> TaskModel:
    """Wrap a loaded body (base + the method's saved result) with the saved head, for inference."""
    meta = json.loads((folder / CONFIG_FILE).read_text())
    task_model = TaskModel(model, HeadConfig(**meta["config"]))
    if task_model.head.in_features != meta["hidden_size"]:
        raise ConfigError(
            f"{folder}: the head expects hidden size {meta['hidden_size']}, but the body has "
            f"{task_model.head.in_features}. Load it onto the base model of the run that trained it."
        )
    task_model.head.load_state_dict(load_file(folder / WEIGHTS_FILE))
    return task_model.eval()
