"""Rollouts for online RL: prompts in, sampled completions out, as a batch the policy can be scored on.

Prompts arrive left-padded (what `generate` needs); each sampled row is rebuilt as its real prompt tokens followed
by its completion up to and including the first stop token, right-padded, so positions count from 0 as in any
other training batch and the completion tokens are the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.device import eval_mode
from tunelab.core.errors import DataError
from tunelab.core.types import Batch
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example
from tunelab.data.tokenize import IGNORE
from tunelab.models.chat import prompt_text
from tunelab.objectives.base import PrepareArgs
from tunelab.objectives.pairs import collate_rows
from tunelab.objectives.rl.rewards import Sample


@dataclass
class PromptData(PreparedData):
    samples: list[Sample] = field(default_factory=list)
    """Every prompt's text and reference answer, by `PromptItem.index` (training prompts first)."""


@dataclass
class PromptItem:
    prompt: list[int]
    index: int
    """Position of the prompt's `Sample` in the objective context (its text and reference answer)."""


@dataclass
class Rollout:
    """Sampled completions as a training batch, plus what the loss needs about them."""

    batch: Batch
    """input_ids / attention_mask / labels (the completion tokens), one row per completion."""
    completions: list[str]
    group: torch.Tensor
    """For each row, which prompt of the micro-batch it answers."""
    finished: torch.Tensor
    """For each row, whether it ended with a stop token (False: cut off at max_new_tokens)."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """What the objective stores for reuse (old log-probs, reference log-probs, rewards, advantages, values)."""


def prompt_length(item: PromptItem) -> int:
    return len(item.prompt)


def collate_prompts(items: list[PromptItem], pad_id: int) -> Batch:
    """Left-padded prompts (generation continues from the last column) and their sample indices."""
    width = max(len(i.prompt) for i in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, width - len(item.prompt) :] = torch.tensor(item.prompt)
        mask[row, width - len(item.prompt) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "index": torch.tensor([i.index for i in items])}


@torch.no_grad()
def sample(
    model: nn.Module,
    prompts: Batch,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stops: list[int],
    pad_id: int,
    tokenizer: PreTrainedTokenizerBase,
) -> Rollout:
    """`n` completions per prompt (greedy when temperature is 0), as a right-padded training batch."""
    ids, mask = prompts["input_ids"].repeat_interleave(n, 0), prompts["attention_mask"].repeat_interleave(n, 0)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
    # transformers' (or peft's) generate: without return_dict_in_generate it returns the token ids
    generate = cast(Callable[..., torch.Tensor], model.generate)
    with eval_mode(model):  # no dropout while sampling: completions are scored later in this mode
        out = generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stops,
            pad_token_id=pad_id, top_k=None, **({"do_sample": False} | sampling),
        )  # fmt: skip
    completion = out[:, ids.size(1) :].cpu()
    is_stop = torch.isin(completion, torch.tensor(stops))
    # Keep tokens up to and including the first stop token; what generate wrote after it is padding.
    keep = (is_stop.long().cumsum(1) - is_stop.long()) == 0
    rows, texts = [], []
    for r in range(completion.size(0)):
        answer = completion[r][keep[r]].tolist()
        rows.append((ids[r][mask[r].bool()].tolist(), answer))
        text = cast(str, tokenizer.decode([t for t in answer if t not in stops], skip_special_tokens=True))
        texts.append(text.strip())  # one sequence decodes to one string
    batch = collate_rows(rows, pad_id)
    group = torch.arange(prompts["input_ids"].size(0)).repeat_interleave(n)
    return Rollout(batch=batch, completions=texts, group=group, finished=is_stop.any(1))


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO (Shao et al., 2024, Eq. 3 with outcome rewards): each reward minus its group's mean, divided by the
    group's standard deviation (+1e-4) when `scale` (Dr. GRPO, Liu et al., 2025, leaves it out)."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(1, keepdim=True) + 1e-4)
    return centred.view(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al., 2016) over rows x T, `mask` 1 on each row's completion
    tokens: A_t = δ_t + γλ A_{t+1}, δ_t = r_t + γ V_{t+1} - V_t, with V = 0 after the last token."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), device=rewards.device)
    next_value = torch.zeros(rewards.size(0), device=rewards.device)
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m
        advantages[:, t] = running
        next_value = torch.where(m.bool(), values[:, t], next_value)
    return advantages


def prepare_prompts(args: PrepareArgs[Any]) -> PromptData:
    """Prompts from chat records (reference: the last assistant turn) or preference records (reference: the
    chosen answer), each with its `Sample` (prompt text and reference answer)."""
    d, tokenizer = args.data, args.tokenizer
    prepared = args.dataset()
    samples: list[Sample] = []
    splits: dict[str, list[PromptItem]] = {}
    for split, name in (("train", "train_records"), ("val", "validation_records")):
        splits[split] = []
        for row in prepared.table(name).to_pylist():
            ex = Example.from_row(row)
            if ex.kind == "chat":
                messages, reference = ex.prompt_and_answer()
            elif ex.kind == "preference":
                messages, reference = ex.messages, ex.chosen
            else:
                continue
            text = prompt_text(tokenizer, messages, d.system_prompt)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[-d.max_length :]
            splits[split].append(PromptItem(ids, len(samples)))
            samples.append(Sample(prompt=text, reference=reference))
    if not splits["train"]:
        raise DataError(
            f"Objective '{args.objective.name}' needs prompts: chat rows (the last assistant turn is the reference "
            "answer rewards may compare with) or preference rows; the training data has none."
        )
    report = {**prepared.report, "train_examples": len(splits["train"]), "val_examples": len(splits["val"])}
    train, val = splits["train"], splits["val"]
    return PromptData(train=train, val=val, val_examples=[], report=report, samples=samples)


def masked_rows(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per-row mean of flat per-token values (`rows` gives each token's row)."""
    sums = torch.zeros(n_rows, device=values.device).index_add(0, rows, values)
    counts = torch.bincount(rows, minlength=n_rows).clamp(min=1)
    return sums / counts


def labels_mask(batch: Batch) -> torch.Tensor:
    return batch["labels"][:, 1:] != IGNORE
