"""Automatic settings: `training.batch_size: auto`, `training.epochs: auto`, `training.learning_rate: auto`,
chosen from what the prepared data and the model are (rows, tokens per row, parameter counts, method, objective)
by the rules below, once the data is read.

Where the numbers come from (LoRA r16 on SmolLM2-135M-Instruct; `benchmarks/results/auto_settings.md`):

- The number of optimizer steps matters most for a small data set: one pass of a few steps barely moves the
  model, whatever the rate. So `epochs` is set to reach `TARGET_STEPS` steps, from one pass to `MAX_EPOCHS`.
  `TARGET_STEPS` is the dates demo's hand-chosen run (2000 rows, batch 16, one pass: 125 steps); `MAX_EPOCHS` is
  the longest schedule the grid measured.
- Adapter methods train well at a peak rate of `ADAPTER_LR` at batches of 8 and 16 in a run of about
  `TARGET_STEPS` steps (the dates demo) and, in the grid, in runs of 12-16 steps: 3e-3 was ahead on two tasks
  of four, level on one and behind on one; a rate raised for short runs (2.7e-3 at 16 steps) lost 12.5 points on
  the one task that had not informed it, so the rate does not depend on the run's length. Above a batch of 16 it
  grows with the square root of the batch (Adam's noise scale).
- A full fine-tune (or freezing some layers) starts from `FULL_LR` for a 135M model, smaller for larger models by
  the square root of the parameter ratio, and preference objectives (dpo, orpo, kto, ...) take a tenth: these
  two factors are the published rules of thumb, not measured here.
- The batch is `MIN_BATCH` below `ROWS_PER_STEP x MIN_STEPS_PER_EPOCH` rows (so that a pass still has steps to
  give), `ROWS_PER_STEP` above, and capped so that a micro-batch holds about `BATCH_TOKENS` tokens.

Every chosen value comes with the reason that chose it; the run prints it and writes the number into its
config.yaml in place of `auto`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunelab.train.config import AUTO_FIELDS, TrainingSection

TARGET_STEPS = 120
"""Optimizer steps a run with `epochs: auto` aims for."""
MAX_EPOCHS = 4
"""The most passes `epochs: auto` makes over a small data set."""
ROWS_PER_STEP = 16
"""`batch_size: auto` for a data set of at least `ROWS_PER_STEP x MIN_STEPS_PER_EPOCH` rows; smaller data sets
get smaller batches (down to `MIN_BATCH`), so that one pass still has steps to give."""
MIN_BATCH = 8
MIN_STEPS_PER_EPOCH = 16
BATCH_TOKENS = 4096
"""The most (unpadded) tokens a micro-batch of `batch_size: auto` holds on average."""
ADAPTER_LR = 1e-3
"""Peak learning rate of adapter methods at a batch of 16 (measured on SmolLM2-135M)."""
FULL_LR = 5e-5
"""Peak learning rate of full fine-tuning of a 135M model at a batch of 16."""
REFERENCE_PARAMS = 135e6
REFERENCE_BATCH = 16
FULL_METHODS = frozenset({"full", "freeze"})
PREFERENCE_OBJECTIVES = frozenset({"dpo", "orpo", "kto", "simpo", "ipo", "cpo"})
PREFERENCE_FACTOR = 0.1


@dataclass(frozen=True)
class RunStats:
    """What the rules look at: the prepared training data and the model the method was applied to."""

    rows: int
    """Training items (after cleaning and splitting)."""
    mean_tokens: float
    """Tokens per item (prompt and answer)."""
    mean_answer_tokens: float | None
    """Tokens that carry loss per item (the answer), when the items are token sequences."""
    model_params: int
    trainable_params: int
    method: str
    objective: str
    processes: int = 1


@dataclass(frozen=True)
class Resolved:
    training: TrainingSection
    """The section with every `auto` replaced by a number."""
    reasons: dict[str, str]
    """Per resolved field, the value and the rule that chose it ("1e-3 (auto: lora, 600 rows, batch 16)")."""


def auto_batch_size(stats: RunStats) -> tuple[int, str]:
    """`ROWS_PER_STEP` for data sets of many rows, `MIN_BATCH` for small ones (so that a pass has steps to give),
    and no more than about `BATCH_TOKENS` tokens per micro-batch for long rows."""
    per_step = _power_of_two_floor(stats.rows // (MIN_STEPS_PER_EPOCH * stats.processes))
    by_rows = min(max(per_step, MIN_BATCH), ROWS_PER_STEP)
    by_tokens = _power_of_two_floor(int(BATCH_TOKENS / max(stats.mean_tokens, 1.0)))
    if by_tokens < by_rows:
        return by_tokens, f"{stats.mean_tokens:.0f} tokens per row: about {BATCH_TOKENS} tokens per micro-batch"
    return by_rows, f"{stats.rows} rows"


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int, processes: int = 1) -> int:
    """Optimizer steps of one pass over `rows` items."""
    return max(math.ceil(math.ceil(rows / (batch_size * processes)) / grad_accum), 1)


def auto_epochs(stats: RunStats, batch_size: int, grad_accum: int) -> tuple[int, str]:
    """Passes that reach `TARGET_STEPS` optimizer steps (one at least, `MAX_EPOCHS` at most)."""
    per_epoch = steps_per_epoch(stats.rows, batch_size, grad_accum, stats.processes)
    epochs = min(max(round(TARGET_STEPS / per_epoch), 1), MAX_EPOCHS)
    if epochs == MAX_EPOCHS and per_epoch * epochs < TARGET_STEPS:
        return epochs, f"{stats.rows} rows, {per_epoch} steps per pass: {MAX_EPOCHS} passes at most"
    return epochs, f"{stats.rows} rows, {per_epoch} steps per pass: about {TARGET_STEPS} steps in all"


def auto_learning_rate(stats: RunStats, batch_size: int, grad_accum: int) -> tuple[float, str]:
    """The measured base rate for the method's kind, scaled by batch, model size and objective."""
    full = stats.method in FULL_METHODS
    lr, parts = (FULL_LR if full else ADAPTER_LR), [stats.method]
    if full and stats.model_params > REFERENCE_PARAMS:
        lr *= math.sqrt(REFERENCE_PARAMS / stats.model_params)
        parts.append(f"{stats.model_params / 1e6:.0f}M parameters")
    global_batch = batch_size * grad_accum * stats.processes
    if global_batch > REFERENCE_BATCH:  # the base rate held for batches of 8 and 16 alike
        lr *= math.sqrt(global_batch / REFERENCE_BATCH)
    parts.append(f"batch {global_batch}")
    if stats.objective in PREFERENCE_OBJECTIVES:
        lr *= PREFERENCE_FACTOR
        parts.append(f"{stats.objective}: a tenth")
    return float(f"{lr:.2g}"), ", ".join(parts)


def resolve_auto(section: TrainingSection, stats: RunStats) -> Resolved:
    """`section` with its `auto` fields chosen for `stats` (batch first: the others depend on it)."""
    chosen: dict[str, float | int] = {}
    reasons: dict[str, str] = {}
    batch = section.batch_size
    if "batch_size" in section.auto:
        batch, why = auto_batch_size(stats)
        chosen["batch_size"], reasons["batch_size"] = batch, f"batch_size {batch} (auto: {why})"
    if "epochs" in section.auto:
        epochs, why = auto_epochs(stats, batch, section.grad_accum)
        chosen["epochs"], reasons["epochs"] = epochs, f"epochs {epochs} (auto: {why})"
    if "learning_rate" in section.auto:
        lr, why = auto_learning_rate(stats, batch, section.grad_accum)
        chosen["learning_rate"], reasons["learning_rate"] = lr, f"learning_rate {lr:g} (auto: {why})"
    resolved = section.model_copy(update={**chosen, "auto": frozenset()})
    return Resolved(resolved, {k: reasons[k] for k in AUTO_FIELDS if k in reasons})


def _power_of_two_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def adopt_saved(section: TrainingSection, saved: dict[str, object]) -> TrainingSection:
    """`section` with the values a checkpoint's run chose for its `auto` settings (`saved`: that run's
    `training:` section as written), so that a resume continues with them instead of choosing again."""
    taken = {key: saved[key] for key in section.auto if isinstance(saved.get(key), int | float)}
    if not taken:
        return section
    return section.model_copy(update={**taken, "auto": section.auto - taken.keys()})
