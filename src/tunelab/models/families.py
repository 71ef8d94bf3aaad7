"""The model families tunelab checks, what each can do, and why a cell that cannot work does not.

One table, read by three readers: the fast path (which of its parts a family takes, and the reason for those it
does not), the architecture check on a model folder, and the README's support matrix, whose cells are each a
test on a tiny random model built from the family's own transformers config class (tests/models/
test_families.py). A cell named in `Family.limits` is one that cannot work; its test checks it fails as said.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

from tunelab.core.errors import ConfigError, ModelError
from tunelab.models.rope import context_length

Cell = Literal["lora", "full", "fast_path", "chat_template", "merge", "peft_export", "gguf", "serve"]
Part = Literal["norm", "mlp", "attention"]
CELLS: dict[Cell, str] = {
    "lora": "LoRA training",
    "full": "full training",
    "fast_path": "fast path",
    "chat_template": "chat template",
    "merge": "merge",
    "peft_export": "PEFT export",
    "gguf": "GGUF export",
    "serve": "serving",
}
"""The matrix's columns: cell -> column title."""
PARTS: dict[Part, str] = {"norm": "fused RMSNorm", "mlp": "fused gated MLP", "attention": "short-row attention"}

_NO_GGUF = (
    "tunelab's GGUF writer (export/gguf.py) maps llama.cpp's llama architecture only (Llama, Mistral); export "
    "--format hf and convert with llama.cpp's convert_hf_to_gguf.py"
)
_EXPERTS = "the experts are one module with 3-D weights, not a gated-MLP module"
_ENCODER_FAST = "the fast path serves causal decoders; encoders attend both ways and use LayerNorm"
_ENCODER: dict[Cell, str] = {
    "chat_template": "encoders read plain text or text pairs; there are no chat turns",
    "gguf": "tunelab's GGUF writer (export/gguf.py) maps llama.cpp's llama architecture only, not its bert one; "
    "use the HF folder (or sentence-transformers) for an encoder",
    "serve": "the generation engine (serve/engine.py) runs causal LMs; an encoder is served for embeddings "
    "(serve/embeddings.py)",
}


@dataclass(frozen=True)
class Family:
    """One model family: its transformers `model_type`, its kind, and what tunelab can do with it."""

    name: str
    model_type: str
    kind: Literal["decoder", "moe", "encoder"]
    fast_path: tuple[Part, ...] = ("norm", "mlp", "attention")
    """The fast-path parts `training.fused_modules` uses for this family."""
    fast_path_gaps: str = ""
    """Why the parts missing from `fast_path` are not used."""
    limits: Mapping[Cell, str] = field(default_factory=dict)
    """Cells that cannot work, each with the reason."""

    def reason(self, cell: Cell) -> str | None:
        """Why `cell` cannot work for this family, or None when it does."""
        return self.limits.get(cell)


def _register(*families: Family) -> dict[str, Family]:
    table: dict[str, Family] = {}
    for family in families:
        if family.model_type in table:
            raise ValueError(f"model_type {family.model_type!r} is listed twice in the family table")
        table[family.model_type] = family
    return table


FAMILIES: dict[str, Family] = _register(
    Family("Llama", "llama", "decoder"),
    Family("Qwen2", "qwen2", "decoder", limits={"gguf": _NO_GGUF}),
    Family("Qwen3", "qwen3", "decoder", limits={"gguf": _NO_GGUF}),
    Family("Mistral", "mistral", "decoder"),
    Family(
        "Gemma 2",
        "gemma2",
        "decoder",
        fast_path=("norm", "mlp"),
        fast_path_gaps="attention: Gemma 2 soft-caps attention scores, which SDPA cannot, so transformers runs it "
        "in eager attention, which the short-row attention does not replace",
        limits={"gguf": _NO_GGUF},
    ),
    Family("Gemma 3 (text)", "gemma3_text", "decoder", limits={"gguf": _NO_GGUF}),
    Family("Phi-3", "phi3", "decoder", limits={"gguf": _NO_GGUF}),
    Family("OLMo 2", "olmo2", "decoder", limits={"gguf": _NO_GGUF}),
    Family(
        "GPT-NeoX",
        "gpt_neox",
        "decoder",
        fast_path=("attention",),
        fast_path_gaps="norm, MLP: LayerNorm with a bias and a non-gated GELU MLP; nothing there to fuse",
        limits={"gguf": _NO_GGUF},
    ),
    Family("Mixtral", "mixtral", "moe", ("norm", "attention"), f"MLP: {_EXPERTS}", {"gguf": _NO_GGUF}),
    Family("Qwen3-MoE", "qwen3_moe", "moe", ("norm", "attention"), f"MLP: {_EXPERTS}", {"gguf": _NO_GGUF}),
    Family("OLMoE", "olmoe", "moe", ("norm", "attention"), f"MLP: {_EXPERTS}", {"gguf": _NO_GGUF}),
    Family("BERT", "bert", "encoder", (), _ENCODER_FAST, _ENCODER),
    Family("ModernBERT", "modernbert", "encoder", (), _ENCODER_FAST, _ENCODER),
)
"""The checked families by transformers `model_type`, in the matrix's row order."""


def family_of(model_type: str) -> Family | None:
    """The checked family of a transformers `model_type`, or None for one the matrix does not cover."""
    return FAMILIES.get(model_type)


def check_architecture(folder: Path, task: Literal["causal-lm", "encoder"]) -> None:
    """Refuse a model folder whose architecture this transformers cannot build for `task`, saying which it is."""
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type")
    known = ", ".join(f.name for f in FAMILIES.values())
    if not model_type:
        raise ModelError(
            f"Model source '{folder}': its config.json has no model_type, so no architecture can be built from it. "
            f"Point model.source at a Hugging Face model folder (checked families: {known})."
        )
    if model_type not in CONFIG_MAPPING:
        raise ModelError(
            f"Model source '{folder}' is a '{model_type}' model, an architecture this transformers does not know "
            f"(and tunelab never runs a model's own code). Checked families: {known}; convert the model to one of "
            "them, or install a transformers release that has it."
        )
    classes = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if task == "causal-lm" else MODEL_MAPPING_NAMES
    if model_type not in classes:
        what = "a causal language model" if task == "causal-lm" else "an encoder"
        raise ModelError(
            f"Model source '{folder}' is a '{model_type}' model, which transformers cannot load as {what} "
            f"(its config.json names {config.get('architectures') or 'no architectures'}). tunelab trains causal "
            f"LMs and encoders; checked families: {known}."
        )


def check_rows_fit(config: object, lengths: list[int], max_length: int) -> None:
    """Refuse training rows longer than the model's context (`max_position_embeddings`): past it, learned
    position embeddings have no entry and rotary positions were never trained, so such rows cannot be learned."""
    context = context_length(config)
    if context is None or not lengths or max(lengths) <= context:
        return
    over = sum(n > context for n in lengths)
    raise ConfigError(
        f"data.max_length: {over} training example(s) are longer than the model's context of {context} tokens "
        f"(config.json max_position_embeddings); the longest has {max(lengths)}. data.max_length is {max_length}, "
        f"so no truncation brings them under the context. Set data.max_length to at most {context}, or extend a "
        "rotary-position model's context with model.rope_scaling (e.g. {type: yarn, factor: 2})."
    )
