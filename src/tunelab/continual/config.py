"""The `continual:` section: train tasks one after another (the run's `stages:`, or successive runs whose
`model.source` is the previous continual run folder) with replay, EWC or one LoRA adapter per task, and measure
what each stage does to every task."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from tunelab.schema import Section


class ReplaySection(Section):
    fraction: float = Field(0.2, gt=0, lt=1)
    """Share of each later stage's training rows that are replayed from earlier stages (0.2: one replayed row
    for every four new ones). Capped by what the buffer holds: rows are not repeated."""
    buffer_size: int = Field(500, ge=1)
    """Rows the reservoir buffer keeps of all earlier stages' training data (a uniform sample, Algorithm R).
    It is stored in the run folder (`replay_buffer.json`), so a later run continues it."""
    seed: int = 0
    """Seed of the reservoir and of the rows drawn from it."""


class EWCSection(Section):
    # `lambda` is a Python keyword: the field is `lam`, and a written-out config (which uses `lam`) reads back.
    model_config = ConfigDict(**Section.model_config, populate_by_name=True)

    lam: float = Field(1000.0, gt=0, alias="lambda")
    """λ of the penalty λ/2 · Σ F (θ - θ*)². The Fisher is of the per-token loss, so its entries are small:
    values of 10²-10⁵ are typical."""
    fisher_samples: int = Field(64, ge=1)
    """Training examples of the finished stage whose squared gradients (one example at a time) make the
    diagonal Fisher. Summed over stages (online EWC) and saved as `<stage>/ewc.safetensors`."""


class ContinualSection(Section):
    replay: ReplaySection | None = None
    """Experience replay: mix earlier stages' rows (a reservoir buffer) into each later stage; off when null."""
    ewc: EWCSection | None = None
    """Elastic weight consolidation: after each stage estimate the diagonal Fisher, and penalise later stages
    for moving the weights it marks as important; off when null."""
    lora_per_task: bool = False
    """Train a fresh adapter per stage on the frozen base (never merged), saved as `<stage>/adapter`; at
    inference the task tag picks the adapter (routing), so earlier tasks cannot be forgotten — but a prompt
    must come with its task."""
    eval_examples: int | None = Field(100, ge=1)
    """Validation examples per task answered (greedy, exact match) after every stage; null: all of them."""
    baseline: bool = False
    """Also score every task before the first stage (the starting model), which gives forward transfer."""
