"""Curriculum difficulty from the base model (`data.schedule.difficulty: loss`).

Before training, one batched pass without gradients measures every training example's mean loss per target
token under the model as loaded (before the method changes it); the curriculum then orders examples from low
to high loss. The scores are cached in the run folder (`difficulty_loss.json`), keyed by the prepared
dataset's fingerprint and the model source, so a resumed run gets exactly the same order without a second pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.core.device import autocast
from tunelab.core.errors import ConfigError
from tunelab.data.config import ScheduleSection
from tunelab.data.pipeline import PreparedData
from tunelab.data.tokenize import IGNORE, Tokenized, collate, model_inputs

SCORES_FILE = "difficulty_loss.json"


def score_losses(
    model: nn.Module, items: list[Tokenized], pad_id: int, batch_size: int = 16, bf16: bool = False
) -> list[float]:
    """Each example's mean next-token loss over its labelled tokens under `model` (no gradients), in the order
    of `items`. Batches are formed from examples of similar length, so little compute goes to padding."""
    device = next(model.parameters()).device
    scores = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device, bf16):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate([items[i] for i in chunk], pad_id).items()}
                logits = model(**model_inputs(batch)).logits[:, :-1].float()
                labels = batch["labels"][:, 1:]
                loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
                mask = (labels != IGNORE).float()
                per_example = (loss * mask).sum(1) / mask.sum(1).clamp(min=1)
                for i, value in zip(chunk, per_example.tolist(), strict=True):
                    scores[i] = value
    finally:
        model.train(was_training)
    return scores


@dataclass(frozen=True)
class DifficultyScoring:
    """What the loss curriculum needs to know of the run: its schedule, the scoring model's source and storage
    dtype (they name the score cache), the objective (whose items must be token sequences) and the batch size."""

    schedule: ScheduleSection
    model_source: str
    model_dtype: str
    objective: str
    batch_size: int = 16


def apply_loss_difficulty(
    model: nn.Module, data: PreparedData, run: DifficultyScoring, run_dir: Path, pad_id: int, bf16: bool = False
) -> PreparedData:
    """`data` with its curriculum ordered by the base model's per-example loss, when the schedule asks for
    `order: curriculum` with `difficulty: loss`; otherwise `data` unchanged. Reads or writes the run folder's
    score cache."""
    s, schedule = run.schedule, data.schedule
    if s.order != "curriculum" or s.difficulty != "loss" or schedule.order != "curriculum":
        return data
    items = data.train
    if not all(isinstance(t, Tokenized) for t in items):
        raise ConfigError(
            f"data.schedule.difficulty=loss scores each example by the base model's next-token loss, which objective "
            f"'{run.objective}' does not train on. Use difficulty: length or field with this objective."
        )
    key = _cache_key(data.report, run, items)
    path = run_dir / SCORES_FILE
    scores, cached = _read_cache(path, key, len(items)), True
    if scores is None:
        scores, cached = score_losses(model, items, pad_id, run.batch_size, bf16), False
        _write_cache(path, key, scores)
    report = {**data.report, "difficulty": {"source": "loss", "file": str(path), "cached": cached, **_stats(scores)}}
    return replace(data, schedule=schedule.with_difficulty(scores), report=report)


def _cache_key(report: dict[str, Any], run: DifficultyScoring, items: list[Tokenized]) -> str:
    """Same dataset (fingerprint, item count and origins) and same scoring model (source and dtype)."""
    h = hashlib.sha256()
    h.update(json.dumps([report.get("fingerprint"), str(run.model_source), run.model_dtype, len(items)]).encode())
    for t in items:
        h.update(f"{t.origin}:{len(t.input_ids)};".encode())
    return h.hexdigest()[:24]


def _read_cache(path: Path, key: str, n: int) -> list[float] | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    scores = saved.get("scores")
    if not isinstance(scores, list) or len(scores) != n:
        return None
    return [float(x) for x in scores]


def _write_cache(path: Path, key: str, scores: list[float]) -> None:
    # Written to a private name first and renamed: every data-parallel process scores and writes the same file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, **_stats(scores), "scores": scores}))
    os.replace(tmp, path)


def _stats(scores: list[float]) -> dict[str, float]:
    if not scores:
        return {"count": 0}
    return {"count": len(scores), "min": min(scores), "max": max(scores), "mean": sum(scores) / len(scores)}
