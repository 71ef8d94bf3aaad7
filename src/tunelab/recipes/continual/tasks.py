"""The pieces a continual run does around each stage: a task's rows (for the replay buffer and the Fisher), its
held-out validation file in the run folder, exact-match scoring of a model on every task, and the Fisher."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.data.config import DataSection
from tunelab.data.load import LoadOptions, load_examples
from tunelab.data.records import Example
from tunelab.data.tokenize import collate, tokenize_all
from tunelab.eval.evaluate import generation_metrics
from tunelab.models.load import pad_id
from tunelab.regularizers.fisher import EWC_FILE, EWCState, accumulate, anchor_of, estimate_fisher, load_ewc, save_ewc


def task_rows(paths: list[str], task: str) -> list[dict[str, Any]]:
    """The chat and text rows of `paths` as loader-ready dicts tagged with `task` (rejected rows are left out:
    the stage's own data report lists them)."""
    rows = []
    for ex in load_examples(paths, options=LoadOptions(task=task)).examples:
        if ex.kind == "chat":
            rows.append({"messages": [{"role": m.role, "content": m.content} for m in ex.messages], "task": task})
        elif ex.kind == "text":
            rows.append({"text": ex.text, "task": task})
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_examples(path: Path) -> list[Example]:
    """A task's validation file (written by `write_rows`) as chat examples with a reference answer."""
    found = load_examples([path]).examples
    chats = [ex for ex in found if ex.kind == "chat" and any(m.role == "assistant" for m in ex.messages)]
    if not chats:
        raise DataError(
            f"{path}: no chat row with an assistant answer, so the task cannot be scored by exact match. Give the "
            "stage validation rows with the expected answer."
        )
    return chats


def draw_replay(buffer_items: list[dict[str, Any]], new_rows: int, fraction: float, seed: int) -> list[dict]:
    """round(new_rows · fraction / (1 - fraction)) buffer rows (so that `fraction` of the stage's rows are replayed),
    at most the whole buffer: rows are not repeated (a repeated row would just be a duplicate)."""
    wanted = round(new_rows * fraction / (1 - fraction))
    return random.Random(seed).sample(buffer_items, min(wanted, len(buffer_items)))


def exact_match(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    max_examples: int | None,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None,
    bf16: bool,
) -> float:
    """Share of the first `max_examples` validation prompts answered exactly (greedy)."""

    metrics, _ = generation_metrics(
        model, tokenizer, examples, max_examples=max_examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
        system_prompt=system_prompt, precision="bf16" if bf16 else "fp32", show_progress=False,
    )  # fmt: skip
    return float(metrics["exact_match"])


def fisher_after_stage(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: DataSection,
    rows: list[dict[str, Any]],
    *,
    samples: int,
    seed: int,
    bf16: bool,
    previous: str | None,
    out_dir: Path,
    task: str,
) -> Path:
    """Estimate the Fisher of the finished stage on `samples` of its own training rows, add the earlier stages'
    (online EWC: F summed, anchored at the weights now) and save it as `out_dir/ewc.safetensors`."""
    chosen = random.Random(seed).sample(rows, min(samples, len(rows)))
    tmp = write_rows(out_dir / "fisher_rows.jsonl", chosen)
    examples = load_examples([tmp]).examples
    tmp.unlink()
    items, _ = tokenize_all(examples, tokenizer, data.max_length, data.loss_on, data.system_prompt, data.truncation)
    if not items:
        raise DataError(f"EWC: none of the {len(chosen)} rows of task '{task}' could be tokenized for the Fisher.")
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    batches = ({k: v.to(device) for k, v in collate(items[i : i + 8], pad).items()} for i in range(0, len(items), 8))
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with precision:
        fisher = estimate_fisher(model, batches)
    state = EWCState(fisher, anchor_of(model), {"tasks": "1", "last_task": task})
    if previous is not None:
        state = accumulate(load_ewc(previous), state)
    return save_ewc(state, out_dir / EWC_FILE)
