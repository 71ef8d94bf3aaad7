"""The `model:` section: which model a run starts from, and how its frozen weights are stored."""

from __future__ import annotations

from typing import Literal

from tunelab.core.schema import Section
from tunelab.models.rope import RopeScaling


class ModelSection(Section):
    source: str = "smollm2-135m"
    """Embedded model name (`tunelab models`), a local Hugging Face folder, or a local `.gguf` file."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Storage dtype of frozen weights. `auto`: bf16 when training in bf16 and the method freezes the base."""
    rope_scaling: RopeScaling | None = None
    """Extend a rotary-position model's context (`{type: linear | dynamic | yarn, factor: 2}`): rows up to factor x
    its original context then train and generate. Everything that loads the run again applies the same scaling."""
