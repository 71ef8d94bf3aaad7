"""The `eval:` section: what a run measures on its validation data before and after training."""

from __future__ import annotations

from pydantic import Field

from tunelab.core.schema import Section


class EvalSection(Section):
    baseline: bool = True
    """Evaluate the base model before training, for the before/after table."""
    generate: bool = True
    """Generate answers for validation prompts and score exact match."""
    max_examples: int | None = Field(default=200, ge=1)
    """Cap on validation examples used for generation metrics."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Generation length limit. Default: twice the longest reference answer (in tokens) plus 16, at most 512 —
    a base model that rambles costs time, and tokens past that cannot turn into an exact match."""
    batch_size: int = Field(default=16, ge=1)
    """Prompts per generation batch."""
    samples: int = Field(default=3, ge=0)
    """Sample answers shown in the final report."""
