"""Split a micro-batch into pieces of at most N tokens, so that the activations autograd keeps stay bounded.

Backward-pass memory grows with the tokens in flight: one 8 x 744-token batch of the embedded SmolLM2 keeps
~4 GB for the backward, and glibc's allocator holds on to much of that between steps. Running the same rows as
several smaller forward/backward passes and summing their gradients gives the same gradient (the loop already
normalises each step's loss by all of its targets), at the cost of slightly smaller matrix products. Only
objectives whose batch loss is a sum over rows (`Objective.row_independent`, which the adversarial and
uncertainty-weighting wrappers turn off) are split; pieces are cut to their own longest row, so they carry less
padding too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunelab.core.types import Batch

CPU_TOKENS = 512
"""`training.micro_batch_tokens: auto` on a CPU. LoRA SFT of SmolLM2-135M on 16-row batches of ~90-token chat rows
(2 threads, the whole run): 512-token pieces peaked at 2.24 GB resident against 2.54 GB for 1024-token pieces,
at 22% more time (68.8 s against 56.2 s); unsplit 16-row batches had peaked at 3.45 GB."""
AUTO_MIN_ROWS = 2
"""Rows a piece holds at least under `auto`, even past the token budget. Every piece pays a fixed cost besides its
rows' work (each matrix product's setup, and there are ~56 of them per layer with LoRA): on ~740-token rows of
the same model, pieces of one row ran 12% slower than pieces of two (441 against 504 tokens/s), and the
two-row pieces still peaked at 3.0 GB, 0.4x of TRL's SFTTrainer on the same rows."""


@dataclass(frozen=True)
class Pieces:
    """How a micro-batch is cut: pieces of at most `max_tokens` padded tokens, but at least `min_rows` rows."""

    max_tokens: int
    min_rows: int = 1


def token_budget(setting: int | str | None, device: torch.device) -> Pieces | None:
    """The pieces `training.micro_batch_tokens` means on `device` (None: never split). `auto` splits on CPUs only:
    accelerators want the largest matrix products they can get. A number is a strict budget (one row a piece at
    least); `auto` keeps two rows a piece at least."""
    if setting == "auto":
        return Pieces(CPU_TOKENS, AUTO_MIN_ROWS) if device.type == "cpu" else None
    return Pieces(int(setting)) if setting is not None else None


def split_rows(batch: Batch, pieces: Pieces | None) -> list[Batch]:
    """`batch` as consecutive row pieces of at most `pieces.max_tokens` padded tokens each (at least
    `pieces.min_rows` rows a piece), as evenly sized as possible; each piece is trimmed to its longest row. One
    piece: the batch unchanged."""
    if pieces is None:  # also every batch that is not rows of token ids (pairs, setfit's anchors)
        return [batch]
    rows, width = batch["input_ids"].shape
    count = math.ceil(rows / max(pieces.min_rows, pieces.max_tokens // width, 1))  # as few as the budget allows
    if count <= 1:
        return [batch]
    per = math.ceil(rows / count)
    out = []
    for start in range(0, rows, per):
        piece = {key: value[start : start + per] for key, value in batch.items()}
        mask = piece.get("attention_mask")
        used = int(mask.any(0).nonzero().max()) + 1 if mask is not None and mask.any() else width
        if "position_ids" not in piece:  # packed rows keep their width: their padding segment is positioned
            piece = {key: value[:, :used] if value.dim() > 1 else value for key, value in piece.items()}
        out.append(piece)
    return out
