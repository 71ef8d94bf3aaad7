"""Classification records as head-training items: label names to ids, token ids, and batches.

Token-classification records hold words joined by single spaces and one tag per word. They are tokenized as the
plain sentence (so a byte-level tokenizer sees the spaces it was trained with, unlike `is_split_into_words`) and
each token is mapped back to its word through the character offsets; the word's tag goes to its first token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.data.records import Example
from tunelab.data.tokenize import IGNORE
from tunelab.objectives.classify.config import Task

Target = int | float | list[int]


@dataclass
class ClassItem:
    """One example as token ids and its target: a class id, a number (regression) or one label per token."""

    input_ids: list[int]
    target: Target
    label: str | None = None
    """The class name (sequence tasks), for class-balanced sampling."""
    origin: str = ""
    task: str = ""
    difficulty: float | None = None
    head: int | None = None
    """Under per-task heads: the index of this item's task head (batches carry it as `head`); else None."""


def label_names(records: list[Example], task: str) -> list[str]:
    """The labels found in `records`, sorted: numbers numerically, names alphabetically, the tag O first."""
    found = Counter(tag for ex in records for tag in _labels_of(ex, task))
    numeric = all(_is_number(x) for x in found)
    return sorted(found, key=lambda x: (float(x), x) if numeric else (x != "O", x))


def _labels_of(example: Example, task: str) -> list[str]:
    label = example.label or ""
    return label.split(" ") if task == "token_classification" else [label]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def encode_sequence(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: str = "right"
) -> list[int]:
    """Token ids of a text (or text pair: the tokenizer's own pair template when it has a separator token, as
    BERT does; else the two joined by a newline). ValueError when too long under `truncation: reject`."""
    pair = example.text_pair or None
    text = example.text
    if pair is not None and tokenizer.sep_token is None:
        text, pair = f"{text}\n{pair}", None
    ids = tokenizer(text, pair)["input_ids"]
    if len(ids) > max_length:
        if truncation == "reject":
            raise ValueError(f"{len(ids)} tokens, more than data.max_length={max_length} (data.truncation=reject)")
        ids = tokenizer(text, pair, truncation=True, max_length=max_length)["input_ids"]
    return list(ids)


def encode_tagged(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int, tag_ids: list[int]
) -> tuple[list[int], list[int]]:
    """(token ids, per-token labels: the word's tag id on its first token, IGNORE elsewhere). Words cut off by
    `max_length` take no part. ValueError when the words no longer match the tags (cleaning merged or split one)."""
    words = example.text.split(" ")
    if len(words) != len(tag_ids) or not all(words):
        raise ValueError(
            f"{len(words)} words for {len(tag_ids)} tags after cleaning (normalisation or PII masking changed the "
            "words); set data.clean options that keep words whole"
        )
    if not tokenizer.is_fast:
        raise ValueError("token classification needs a fast tokenizer (character offsets map tokens to words)")
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    enc = tokenizer(example.text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    word_ids: list[int | None] = []
    for start, end in enc["offset_mapping"]:
        span = example.text[start:end]
        if end <= start or not span.strip():
            word_ids.append(None)  # special tokens, and a lone space token
            continue
        first = start + (len(span) - len(span.lstrip()))  # byte-level tokens may carry the space before the word
        word_ids.append(_word_at(starts, first))
    labels = align_word_labels(word_ids, tag_ids)
    if all(x == IGNORE for x in labels):
        raise ValueError("no word is left with a tag after tokenizing (is data.max_length too small?)")
    return list(enc["input_ids"]), labels


def align_word_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Token labels from word labels (a fast tokenizer's `word_ids()`): the first sub-token of each word gets the
    word's label; special tokens and later sub-tokens get IGNORE, so each word counts once."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE if word is None or word == previous else word_labels[word])
        previous = word
    return out


def _word_at(starts: list[int], char: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # the last word starting at or before `char`
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if starts[mid] <= char else (lo, mid - 1)
    return lo


def collate_items(items: list[ClassItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask and `labels`: B class ids, B floats, or B x T (IGNORE on padding)."""
    width = max(len(i.input_ids) for i in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, item in enumerate(items):
        ids[r, : len(item.input_ids)] = torch.tensor(item.input_ids)
        mask[r, : len(item.input_ids)] = 1
    first = items[0].target
    if isinstance(first, list):
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for r, item in enumerate(items):
            assert isinstance(item.target, list)  # a batch holds one task kind: all tag lists when the first is
            labels[r, : len(item.target)] = torch.tensor(item.target)
    else:  # class ids ride as (exact) floats beside regression targets when a batch mixes task heads
        regression = any(isinstance(i.target, float) for i in items)
        labels = torch.tensor([i.target for i in items], dtype=torch.float32 if regression else torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if items[0].head is not None:
        batch["head"] = torch.tensor([i.head for i in items])
    return batch


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Examples (sequence tasks) or tagged words (token classification) in a batch: what its loss is divided by."""
    labels = batch["labels"]
    return int((labels != IGNORE).sum()) if labels.dim() == 2 else int(labels.size(0))


def item_length(item: ClassItem) -> int:
    return len(item.input_ids)


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
