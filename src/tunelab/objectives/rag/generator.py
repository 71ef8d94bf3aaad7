"""The generator's side of retrieval-augmented training: prompts with passages, and answer scores under them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.data.tokenize import IGNORE, collate, tokenize_example
from tunelab.models.load import pad_id
from tunelab.objectives.lm import selected_logits

DEFAULT_TEMPLATE = "Context:\n{passages}\n\nQuestion: {question}"


def rag_prompt(template: str, passages: list[str], question: str) -> str:
    """The user message: `template` with `{passages}` (one per line, best first) and `{question}` filled in."""
    return template.format(passages="\n".join(passages), question=question)


def rag_example(template: str, passages: list[str], question: str, answer: str, origin: str = "") -> Example:
    """A chat record: the prompt with its passages, and the answer as the assistant turn."""
    return Example([Message("user", rag_prompt(template, passages, question)), Message("assistant", answer)], origin)


@dataclass
class AnswerScores:
    """Per row of a batch of (prompt, answer) sequences."""

    nll: torch.Tensor
    """Summed negative log-likelihood of the answer tokens (B)."""
    tokens: torch.Tensor
    """How many answer tokens (B)."""
    right: torch.Tensor
    """1 where every answer token is the argmax under teacher forcing, else 0 (B)."""


def answer_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    max_length: int,
    system_prompt: str | None,
) -> AnswerScores:
    """Teacher-forced scores of each example's answer; gradients flow when grad mode is on.

    Sequences over `max_length` lose their start (the passages), never the answer.
    """
    items = []
    for ex in examples:
        try:
            items.append(tokenize_example(ex, tokenizer, max_length, "last", system_prompt, truncation="left"))
        except ValueError as exc:
            raise DataError(
                f"{ex.origin}: the question with its passages cannot be tokenized for training ({exc}). Raise "
                "data.max_length or shorten the answer."
            ) from None
    device = next(p for p in model.parameters()).device
    pad = pad_id(tokenizer)
    batch = {k: v.to(device) for k, v in collate(items, pad).items()}
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = selected_logits(model, batch, keep).float()
    targets = labels[keep]
    rows = keep.nonzero()[:, 0]
    size = len(examples)
    token_nll = F.cross_entropy(logits, targets, reduction="none")
    nll = torch.zeros(size, device=device).index_add(0, rows, token_nll)
    tokens = torch.bincount(rows, minlength=size)
    wrong = torch.bincount(rows, weights=(logits.argmax(-1) != targets).float(), minlength=size)
    return AnswerScores(nll=nll, tokens=tokens, right=(wrong == 0).long())
