"""Turn conversations into token ids and labels with the tokenizer's own chat template.

Which tokens carry loss is decided on the rendered text: each assistant turn's character span is found by
rendering the conversation up to that turn (with and without the turn), then the fast tokenizer's offsets map
spans to tokens. This works for any prefix-stable template without special `{% generation %}` markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from tunelab.data.records import Example, Message, Reject

IGNORE = -100
LossOn = Literal["assistant", "last", "all"]


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss is taken (not yet shifted)."""
    origin: str

    @property
    def target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


class TemplateError(ValueError):
    """The chat template renders a conversation differently depending on what follows (not prefix-stable)."""


def with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """Add `system_prompt` in front of a conversation that has no system message."""
    if system_prompt is None or (messages and messages[0].role == "system"):
        return messages
    return [Message("system", system_prompt), *messages]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The chat template's text for these messages."""
    chat = [{"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)


def loss_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message], loss_on: LossOn) -> tuple[str, list]:
    """The rendered conversation and the character spans that carry loss."""
    full = render(tokenizer, messages)
    if loss_on == "all":
        return full, [(0, len(full))]
    turns = [k for k, m in enumerate(messages) if m.role == "assistant" and m.trainable]
    if loss_on == "last":
        turns = turns[-1:]
    spans = []
    for k in turns:
        before = render(tokenizer, messages[:k], add_generation_prompt=True)
        upto = render(tokenizer, messages[: k + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise TemplateError("the chat template is not prefix-stable")
        # The turn's text includes its end-of-turn token (so the model learns to stop), not the newline after.
        spans.append((len(before), len(upto.rstrip())))
    return full, spans


def token_length(example: Example, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = None) -> int:
    """How many tokens the record takes (chat: after the chat template; preference: prompt plus the longer
    answer; classification: the text and its pair; pairs: the longest text)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    if example.kind == "chat":
        return count(render(tokenizer, with_system(example.messages, system_prompt)))
    if example.kind == "preference":
        prompt = render(tokenizer, with_system(example.messages, system_prompt), add_generation_prompt=True)
        return count(prompt) + max(count(example.chosen), count(example.rejected))
    if example.kind == "pairs":
        return max(count(t) for t in (example.anchor, example.positive, example.negative))
    return count(example.text) + (count(example.text_pair) if example.text_pair else 0)


def tokenize_example(
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    loss_on: LossOn = "assistant",
    system_prompt: str | None = None,
) -> Tokenized:
    """Token ids and labels for one conversation, cut to `max_length`. Raises ValueError when nothing is left."""
    messages = with_system(example.messages, system_prompt)
    text, spans = loss_spans(tokenizer, messages, loss_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    span_iter = iter(sorted(spans))
    span = next(span_iter, None)
    for i, (start, end) in enumerate(offsets):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if span is not None and end > span[0] and start < span[1]:
            labels[i] = ids[i]
    tokenized = Tokenized(input_ids=ids[:max_length], labels=labels[:max_length], origin=example.origin)
    if tokenized.target_tokens == 0:
        raise ValueError(
            f"no answer tokens within data.max_length={max_length} (the row has {len(ids)} tokens); "
            "raise data.max_length or shorten the prompt"
        )
    return tokenized


def tokenize_all(
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    loss_on: LossOn = "assistant",
    system_prompt: str | None = None,
) -> tuple[list[Tokenized], list[Reject]]:
    """Tokenize many examples; the ones that cannot be trained on become rejects with the reason."""
    done: list[Tokenized] = []
    rejects: list[Reject] = []
    for ex in examples:
        try:
            done.append(tokenize_example(ex, tokenizer, max_length, loss_on, system_prompt))
        except ValueError as exc:
            rejects.append(Reject(origin=ex.origin, reason=str(exc), row=str(ex.messages)[:500]))
    return done, rejects


def collate(batch: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into input_ids, attention_mask and labels tensors."""
    width = max(len(t.input_ids) for t in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, t in enumerate(batch):
        n = len(t.input_ids)
        input_ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
