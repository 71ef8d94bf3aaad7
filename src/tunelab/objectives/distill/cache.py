"""The teacher's top-k next-token log-probs for every training position, computed once and kept on disk.

Running the teacher every step costs a full teacher forward per micro-batch; with the top-k cache the teacher runs
once over the data (and never again for the same teacher, k and tokens: the cache is named by a hash of them),
and training holds k ids and log-probs per target token instead of a teacher in memory. k of 20-50 keeps almost
all of a language model's probability mass.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.core.device import autocast
from tunelab.data.tokenize import IGNORE, Tokenized, collate
from tunelab.methods.trained import is_run, read_run
from tunelab.models.load import resolve_source


@dataclass
class TopK:
    """Top-k token ids (int32) and their teacher log-probs (fp16) at each target position of one sequence, in
    position order (n_targets x k)."""

    ids: torch.Tensor
    logps: torch.Tensor


def fingerprint(teacher_files: list[Path], k: int, items: list[Tokenized]) -> str:
    """A hash of the teacher's weight files (name, size, modification time), k and every item's tokens."""
    h = hashlib.sha256(f"tunelab-topk:1:{k}".encode())
    for f in sorted(teacher_files):
        stat = f.stat()
        h.update(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for item in items:
        h.update(torch.tensor(item.input_ids, dtype=torch.int32).numpy().tobytes())
        h.update(torch.tensor(item.labels, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_topk(
    logits_at_targets: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
    items: list[Tokenized],
    k: int,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    batch_size: int = 8,
) -> list[TopK]:
    """Top-k log-probs of the teacher (`logits_at_targets(batch, keep)` -> logits at the target positions)."""
    out: list[TopK] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {key: v.to(device) for key, v in collate(chunk, pad_id).items()}
        keep = batch["labels"][:, 1:] != IGNORE
        with autocast(device, bf16):
            logps = logits_at_targets(batch, keep).float().log_softmax(-1)
        values, ids = logps.topk(k, dim=-1)
        counts = keep.sum(1).tolist()
        for ids_i, values_i in zip(ids.split(counts), values.split(counts), strict=True):
            out.append(TopK(ids_i.to(torch.int32).cpu(), values_i.to(torch.float16).cpu()))
    return out


def cached_topk(folder: Path, key: str, compute: Callable[[], list[TopK]]) -> list[TopK]:
    """The cached entry `key` under `folder`, or `compute()` written there first (atomically)."""
    path = folder / f"{key}.safetensors"
    if path.is_file():
        tensors = load_file(path)
        counts = tensors["counts"].tolist()
        return [TopK(i, v) for i, v in zip(tensors["ids"].split(counts), tensors["logps"].split(counts), strict=True)]
    entries = compute()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    k = entries[0].ids.size(1) if entries else 0
    save_file(
        {
            "ids": torch.cat([e.ids for e in entries]) if entries else torch.zeros(0, k, dtype=torch.int32),
            "logps": torch.cat([e.logps for e in entries]) if entries else torch.zeros(0, k, dtype=torch.float16),
            "counts": torch.tensor([e.ids.size(0) for e in entries], dtype=torch.int64),
        },
        str(tmp),
    )
    tmp.replace(path)
    return entries


def weight_files(spec: str) -> list[Path]:
    """The weight files a teacher is loaded from (for the cache key): a run folder's (with its base model's) or
    a model source's."""

    folder = Path(spec)
    files = []
    if is_run(folder):
        files = [p for p in folder.rglob("*.safetensors") if "checkpoints" not in p.parts]
        spec = read_run(folder).source
    source = resolve_source(spec)
    root = source.path
    files += [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
    return files
