"""Curriculum difficulty from the base model (`data.schedule.difficulty: loss`).

Before training, one batched pass without gradients measures every training example's mean loss per target
token under the model as loaded (before the method changes it); the curriculum then orders examples from low
to high loss. The scores are cached in the run folder (`difficulty_loss.json`), keyed by the prepared
dataset's fingerprint and the model source, so a resumed run gets exactly the same order without a second pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.data.tokenize import IGNORE, Tokenized, collate, model_inputs

if TYPE_CHECKING:
    from tunelab.config import TunelabConfig
    from tunelab.data.pipeline import PreparedData

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
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        with torch.no_grad(), amp:
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


def apply_loss_difficulty(
    model: nn.Module, data: PreparedData, cfg: TunelabConfig, run_dir: Path, pad_id: int, bf16: bool = False
) -> PreparedData:
    """`data` with its curriculum ordered by the base model's per-example loss, when the config asks for
    `order: curriculum` with `difficulty: loss`; otherwise `data` unchanged. Reads or writes the run folder's
    score cache."""
    s = cfg.data.schedule
    schedule = getattr(data, "schedule", None)
    if s.order != "curriculum" or s.difficulty != "loss" or schedule is None or schedule.order != "curriculum":
        return data
    items = data.train
    if not all(isinstance(t, Tokenized) for t in items):
        from tunelab.core.errors import ConfigError

        raise ConfigError(
            f"data.schedule.difficulty=loss scores each example by the base model's next-token loss, which objective "
            f"'{cfg.objective.name}' does not train on. Use difficulty: length or field with this objective."
        )
    key = _cache_key(data.report, cfg, items)
    path = run_dir / SCORES_FILE
    scores, cached = _read_cache(path, key, len(items)), True
    if scores is None:
        scores, cached = score_losses(model, items, pad_id, cfg.eval.batch_size, bf16), False
        _write_cache(path, key, scores)
    data.report["difficulty"] = {"source": "loss", "file": str(path), "cached": cached, **_stats(scores)}
    return replace(data, schedule=schedule.with_difficulty(scores))


def _cache_key(report: dict[str, Any], cfg: TunelabConfig, items: list[Tokenized]) -> str:
    """Same dataset (fingerprint, item count and origins) and same scoring model (source and dtype)."""
    h = hashlib.sha256()
    h.update(json.dumps([report.get("fingerprint"), str(cfg.model.source), cfg.model.dtype, len(items)]).encode())
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
