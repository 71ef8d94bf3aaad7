"""The `eval:` section: what a run measures on its validation data before and after training."""

from __future__ import annotations

from pydantic import Field

from tunelab.core.schema import Section
from tunelab.models.condense import LongPrompts


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
    similarity: str | None = None
    """An encoder (e.g. `minilm-l6`, the embedded all-MiniLM-L6-v2) that scores each generated answer's embedding
    similarity to its reference. Empty: not scored (it loads a second model)."""
    long_prompts: LongPrompts = "error"
    """A validation prompt longer than the model's context (less the tokens to generate): `error` stops with the
    row named; `hierarchical` answers it from the model's own notes on the parts of its longest message
    (`tunelab.models.condense`), counted as `prompts_condensed`."""
    json_schema: str | None = None
    """A JSON Schema file that structured answers must validate against (`json_schema` metric). Validity and shape
    against the reference (`json_valid`, `json_match`) are scored without it whenever every reference is JSON."""
