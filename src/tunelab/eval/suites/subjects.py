"""What the suites score: the rows of a data file (the text a suite changes, the prompt around it, the reference),
and the models answering them, a generator or a classifier behind one small interface.

The suites change only one text per row: a chat row's last user message, a classification row's `text`. Earlier
turns, a system prompt and a classifier's `text_pair` stay as they are, so any difference comes from the change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.device import eval_mode, module_device
from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.fewshot.context import context_window
from tunelab.models.chat import prompt_text
from tunelab.models.generate import Precision, generate_answers, stop_token_ids
from tunelab.models.load import pad_id
from tunelab.objectives.classify.data import ClassItem, collate_items, encode_sequence
from tunelab.objectives.classify.heads import TaskModel


@dataclass(frozen=True)
class Row:
    """One data row as the suites see it."""

    origin: str
    text: str
    """The text a suite perturbs or swaps terms in."""
    reference: str
    """The reference answer (generators) or the gold label (classifiers); empty when the row has none."""
    prompt: tuple[Message, ...] = ()
    """Generators: the conversation before the answer, its last user message being `text`."""
    text_pair: str = ""

    def messages(self, text: str) -> list[Message]:
        """The prompt with its last user message replaced by `text`."""
        last = max(i for i, m in enumerate(self.prompt) if m.role == "user")
        return [replace(m, content=text) if i == last else m for i, m in enumerate(self.prompt)]


def generation_rows(examples: list[Example]) -> list[Row]:
    """Chat rows: the last user message is the text; the last assistant turn, when there is one, the reference."""
    rows = []
    for ex in examples:
        if ex.kind != "chat" or not any(m.role == "user" for m in ex.messages):
            raise DataError(
                f"{ex.origin}: a {ex.kind} record without a user message; the suites of a generator "
                "change the last user message of chat rows. Give chat rows (messages)."
            )
        if any(m.role == "assistant" for m in ex.messages):
            prompt, reference = ex.prompt_and_answer()
        else:
            prompt, reference = ex.messages, ""
        text = next(m.content for m in reversed(prompt) if m.role == "user")
        rows.append(Row(ex.origin, text, reference, tuple(prompt)))
    return rows


def classification_rows(examples: list[Example]) -> list[Row]:
    """Classification rows: the text is `text`, the reference its label."""
    wrong = [ex for ex in examples if ex.kind != "classification"]
    if wrong:
        raise DataError(
            f"{wrong[0].origin}: a {wrong[0].kind} record; a classifier's suites need classification "
            "rows (text, label)."
        )
    return [Row(ex.origin, ex.text, ex.label or "", text_pair=ex.text_pair) for ex in examples]


class Subject(Protocol):
    """A model the suites ask: its answers to texts put into rows, and whether a text fits its context."""

    name: str

    def answers(self, rows: list[Row], texts: list[str]) -> list[str]: ...

    def too_long(self, row: Row, text: str) -> str | None: ...


class Generator:
    """A causal LM answering greedily with its chat template (as `tunelab eval` does)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        system_prompt: str | None = None,
        precision: Precision = "fp32",
    ) -> None:
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.system_prompt = system_prompt
        self.precision: Precision = precision
        self.window = context_window(model)

    def answers(self, rows: list[Row], texts: list[str]) -> list[str]:
        prompts = [row.messages(text) for row, text in zip(rows, texts, strict=True)]
        return generate_answers(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            system_prompt=self.system_prompt,
            precision=self.precision,
        )

    def _prompt_ids(self, row: Row, text: str) -> list[int]:
        rendered = prompt_text(self.tokenizer, row.messages(text), self.system_prompt)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def too_long(self, row: Row, text: str) -> str | None:
        if self.window is None:
            return None
        tokens = len(self._prompt_ids(row, text))
        if tokens + self.max_new_tokens <= self.window:
            return None
        return (
            f"{self.name}: the prompt is {tokens} tokens, with {self.max_new_tokens} to generate over the "
            f"model's context of {self.window}"
        )

    @torch.inference_mode()
    def answer_logprob(self, row: Row, text: str, answer: str) -> float:
        """log p(answer, then the end of the turn | the prompt with `text`), in nats, summed over its tokens."""
        prompt = self._prompt_ids(row, text)
        stop = stop_token_ids(self.model, self.tokenizer)[:1]
        target = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + stop
        ids = torch.tensor([prompt + target], device=module_device(self.model))
        with eval_mode(self.model):
            logits = self.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt) :, None])
        return float(picked.sum())


class Classifier:
    """A sequence-classification run's model (its body with the trained head): predicted labels and probabilities."""

    def __init__(self, name: str, model: TaskModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16) -> None:
        if model.cfg.task != "sequence" or model.cfg.problem != "classification":
            raise DataError(
                f"{name}: the suites score sequence-classification heads; this head predicts "
                f"{model.cfg.problem if model.cfg.task == 'sequence' else 'a tag per token'}."
            )
        self.name, self.model, self.tokenizer, self.batch_size = name, model, tokenizer, batch_size
        self.labels = model.cfg.labels or [str(i) for i in range(model.cfg.num_labels)]
        self.window = min(int(tokenizer.model_max_length), context_window(model.model) or 10**9)

    def _ids(self, row: Row, text: str) -> list[int]:
        return encode_sequence(
            Example(kind="classification", text=text, text_pair=row.text_pair), self.tokenizer, 10**9
        )

    def too_long(self, row: Row, text: str) -> str | None:
        tokens = len(self._ids(row, text))
        return None if tokens <= self.window else f"{self.name}: {tokens} tokens, over the context of {self.window}"

    @torch.inference_mode()
    def probabilities(self, rows: list[Row], texts: list[str]) -> torch.Tensor:
        """(n, classes) class probabilities of each text put into its row."""
        items = [ClassItem(self._ids(row, text), 0) for row, text in zip(rows, texts, strict=True)]
        device, pad, out = module_device(self.model), pad_id(self.tokenizer), []
        with eval_mode(self.model):
            for start in range(0, len(items), self.batch_size):
                batch = collate_items(items[start : start + self.batch_size], pad)
                logits = self.model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float()
                out.append(torch.softmax(logits, -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def answers(self, rows: list[Row], texts: list[str]) -> list[str]:
        return [self.labels[i] for i in self.probabilities(rows, texts).argmax(-1).tolist()]
