"""Preference data for the pairwise objectives (DPO, ORPO, reward models, KTO): a prompt with a chosen and a
rejected answer, tokenized once, collated as one batch of 2B rows (all chosen answers first, then all rejected).

The prompt is rendered with the chat template and its generation prompt; an answer is what the template adds
after that for the assistant turn, end-of-turn token included (so the model also learns where to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Batch, Message
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example, Reject
from tunelab.data.tokenize import IGNORE, TemplateError
from tunelab.models.chat import render, with_system
from tunelab.objectives.base import PrepareArgs, require_kind


@dataclass
class PairItem:
    """One preference pair as token ids. `ref` holds precomputed reference log-probs (chosen, rejected)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    origin: str = ""
    ref: tuple[float, float] | None = None


def pair_length(item: PairItem) -> int:
    return len(item.prompt) + max(len(item.chosen), len(item.rejected))


def count_pairs(batch: Batch) -> int:
    return batch["input_ids"].size(0) // 2


def answer_text(tokenizer: PreTrainedTokenizerBase, messages: list[Message], prompt: str, answer: str) -> str:
    """The text the chat template adds after `prompt` for an assistant turn `answer` (end-of-turn included)."""
    full = render(tokenizer, [*messages, Message("assistant", answer)])
    if not full.startswith(prompt):
        raise TemplateError("the chat template renders the prompt differently when an answer follows")
    return full[len(prompt) :].rstrip()


def tokenize_pair(
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    system_prompt: str | None = None,
    truncation: str = "right",
) -> PairItem:
    """Token ids of a preference record. Too long: the prompt loses its start (down to half of `max_length`),
    then the answers lose their ends; `truncation: reject` raises ValueError instead."""
    messages = with_system(example.messages, system_prompt)
    prompt = render(tokenizer, messages, add_generation_prompt=True)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt_ids = ids(prompt)
    chosen = ids(answer_text(tokenizer, messages, prompt, example.chosen))
    rejected = ids(answer_text(tokenizer, messages, prompt, example.rejected))
    longest = max(len(chosen), len(rejected))
    if len(prompt_ids) + longest > max_length:
        if truncation == "reject":
            raise ValueError(f"{len(prompt_ids) + longest} tokens, more than data.max_length={max_length}")
        keep_prompt = min(len(prompt_ids), max(max_length - longest, max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        room = max_length - keep_prompt
        chosen, rejected = chosen[:room], rejected[:room]
    return PairItem(prompt_ids, chosen, rejected, example.origin)


def collate_pairs(items: list[PairItem], pad_id: int) -> Batch:
    """2B right-padded rows: prompt+chosen for every pair, then prompt+rejected; labels mark the answer tokens.
    `ref_logps` (2B) comes along when every item has precomputed reference log-probs."""
    rows = [(i.prompt, i.chosen) for i in items] + [(i.prompt, i.rejected) for i in items]
    batch = collate_rows(rows, pad_id)
    refs = [i.ref for i in items if i.ref is not None]
    if items and len(refs) == len(items):
        batch["ref_logps"] = torch.tensor([r[0] for r in refs] + [r[1] for r in refs])
    return batch


def collate_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """(prompt, answer) rows right-padded into input_ids / attention_mask / labels (IGNORE outside answers)."""
    width = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (prompt, answer) in enumerate(rows):
        n, m = len(prompt), len(answer)
        input_ids[r, : n + m] = torch.tensor(prompt + answer)
        labels[r, n : n + m] = torch.tensor(answer)
        mask[r, : n + m] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def preference_records(args: PrepareArgs[Any]) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(train records, validation records, report) of kind `preference`; other kinds are a DataError."""
    prepared = args.dataset()
    objective = args.objective.name
    require_kind(
        prepared.report["kinds"], "preference", objective, "preference pairs only: rows with 'chosen' and "
        "'rejected' answers (and a 'prompt'), or OpenAI's 'input' / 'preferred_output' / 'non_preferred_output'",
        instead="choose objective sft",
    )  # fmt: skip
    split = {}
    for name in ("train_records", "validation_records"):
        split[name] = [Example.from_row(r) for r in prepared.table(name).to_pylist()]
    return split["train_records"], split["validation_records"], prepared.report


def prepare_pairs(args: PrepareArgs[Any]) -> PreparedData:
    """Preference records tokenized as `PairItem`s; pairs that cannot be trained on are counted in the report."""
    train_records, val_records, report = preference_records(args)
    d, tokenizer = args.data, args.tokenizer
    out: dict[str, list[PairItem]] = {"train": [], "val": []}
    rejects: list[Reject] = []
    for split, records in (("train", train_records), ("val", val_records)):
        for ex in records:
            try:
                out[split].append(tokenize_pair(ex, tokenizer, d.max_length, d.system_prompt, d.truncation))
            except ValueError as exc:
                rejects.append(Reject(origin=ex.origin, reason=str(exc), row=ex.chosen[:200], stage="tokenize"))
    report["train_examples"], report["val_examples"] = len(out["train"]), len(out["val"])
    report["pair_rejects"] = [r.to_json() for r in rejects[:20]]
    report["rejected"] = report.get("rejected", 0) + len(rejects)
    if not out["train"]:
        raise DataError("No preference pair fits data.max_length; raise data.max_length or shorten the answers.")
    train, val = out["train"], out["val"]
    return PreparedData(train=train, val=val, val_examples=[], report=report)
