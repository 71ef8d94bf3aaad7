"""The `contrastive` objective: an encoder trained on (anchor, positive[, negative]) pairs with in-batch-negatives
InfoNCE (the embedding maths lives in tunelab.embeddings: losses, pooling, retrieval metrics).

Items are `EmbedItem`s (token ids per role), collated into `{role}_input_ids` / `{role}_attention_mask` tensors.
The loss is a sum over anchors, its count the number of anchors, and `correct` counts anchors whose own positive
scores highest among the batch's candidates (validation reports it as `val_acc`).

In-batch negatives are only those of the micro-batch: with gradient accumulation each micro-batch is its own
contrastive problem, so a larger `training.batch_size` (not `grad_accum`) is what gives more negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example, Reject
from tunelab.models.pooling import embed_batch
from tunelab.objectives.base import Objective, PrepareArgs, Setup, SetupArgs, require_kind
from tunelab.objectives.embed.losses import info_nce, matryoshka

ROLES = ("anchor", "positive", "negative")


class ContrastiveConfig(Section):
    name: Literal["contrastive"] = "contrastive"
    scale: float = Field(default=20.0, gt=0)
    """Cosine similarities are multiplied by this before the softmax (1 / temperature; 20 = temperature 0.05)."""
    matryoshka_dims: list[int] = []
    """Also train these leading dimensions to work alone (e.g. [64, 128, 384]); the loss sums over them."""
    matryoshka_weights: list[float] = []
    """Weight of each Matryoshka dimension (default 1 each)."""
    symmetric: bool = False
    """Also pick each positive's anchor among the batch's anchors, averaging both directions (CLIP-style)."""


@dataclass
class EmbedItem:
    """One training pair as token ids (special tokens included); `negative` is empty without a hard negative."""

    anchor: list[int]
    positive: list[int]
    negative: list[int]
    origin: str = ""


def tokenize_embed_pair(example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int) -> EmbedItem:
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"]) if text else []

    return EmbedItem(ids(example.anchor), ids(example.positive), ids(example.negative), example.origin)


def embed_length(item: EmbedItem) -> int:
    return max(len(item.anchor), len(item.positive), len(item.negative))


def count_anchors(batch: Batch) -> int:
    return int(batch["anchor_input_ids"].shape[0])


def collate_embed(items: Sequence[EmbedItem], pad_id: int) -> Batch:
    """Right-padded ids and masks per role; negatives only when every item has one (a ragged set would misalign)."""
    roles = ROLES if all(item.negative for item in items) else ROLES[:2]
    batch: Batch = {}
    for role in roles:
        rows = [getattr(item, role) for item in items]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
        batch[f"{role}_input_ids"], batch[f"{role}_attention_mask"] = ids, mask
    return batch


def contrastive_loss(model: nn.Module, batch: Batch, ctx: ContrastiveConfig | None = None) -> LossParts:
    """InfoNCE over the batch (Matryoshka-summed when dims are set), as a sum over anchors with their count."""
    cfg = ctx or ContrastiveConfig()
    vectors = {
        role: embed_batch(model, batch[f"{role}_input_ids"], batch[f"{role}_attention_mask"])
        for role in ROLES
        if f"{role}_input_ids" in batch
    }
    args = (vectors["anchor"], vectors["positive"], vectors.get("negative"))
    if cfg.matryoshka_dims:
        weights = cfg.matryoshka_weights or None
        mean = matryoshka(info_nce, *args, dims=cfg.matryoshka_dims, weights=weights, scale=cfg.scale,
                          symmetric=cfg.symmetric)  # fmt: skip
    else:
        mean = info_nce(*args, scale=cfg.scale, symmetric=cfg.symmetric)
    n = vectors["anchor"].shape[0]
    with torch.no_grad():
        candidates = torch.cat([v for v in args[1:] if v is not None])
        best = (F.normalize(args[0].float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T).argmax(-1)
        correct = (best == torch.arange(n, device=best.device)).sum()
    return LossParts(loss_sum=mean * n, count=torch.tensor(n, device=mean.device), correct=correct)


def prepare_embed_pairs(args: PrepareArgs[ContrastiveConfig]) -> PreparedData:
    """Records of kind `pairs` tokenized as `EmbedItem`s; other kinds are a DataError."""
    prepared = args.dataset()
    require_kind(
        prepared.report["kinds"], "pairs", "contrastive", "pairs only: rows with 'anchor' and 'positive' (and "
        "optionally 'negative')",
    )  # fmt: skip
    out: dict[str, list[EmbedItem]] = {}
    rejects: list[Reject] = []
    for split, name in (("train", "train_records"), ("val", "validation_records")):
        out[split] = []
        for row in prepared.table(name).to_pylist():
            ex = Example.from_row(row)
            if not (ex.anchor and ex.positive):
                rejects.append(Reject(origin=ex.origin, reason="no anchor or positive", row=ex.anchor[:200]))
                continue
            out[split].append(tokenize_embed_pair(ex, args.tokenizer, args.data.max_length))
    report = {**prepared.report, "train_examples": len(out["train"]), "val_examples": len(out["val"])}
    report["rejected"] = report.get("rejected", 0) + len(rejects)
    if not out["train"]:
        raise DataError("No training pair has both an anchor and a positive; check the pairs files.")
    train, val = out["train"], out["val"]
    return PreparedData(train=train, val=val, val_examples=[], report=report)


def _setup(cfg: ContrastiveConfig, args: SetupArgs) -> Setup[ContrastiveConfig]:
    return Setup(args.model, cfg)


OBJECTIVE = Objective(
    name="contrastive",
    loss=contrastive_loss,
    config=ContrastiveConfig,
    prepare=prepare_embed_pairs,
    setup=_setup,
    collate=collate_embed,
    length=embed_length,
    count=count_anchors,
    metric="acc",
    perplexity=False,
)
