"""LoRA adapters as weight changes: read a PEFT adapter folder into ΔW = scale·B@A per module, and write a merged
set of low-rank factors back as a PEFT adapter.

Reading is written by hand (not through peft's `PeftModel`) so that merging never needs a base model in memory
when only adapters are combined, and so the ΔW of each module can be streamed one at a time. The rules follow
peft's LoRA layers: scale = alpha/r (alpha/sqrt(r) with rsLoRA), alpha from `alpha_pattern` when a pattern
matches, ΔW transposed for `fan_in_fan_out` (GPT-2's Conv1D) and for embeddings.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.core.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_SUFFIXES = {False: (".lora_A.weight", ".lora_B.weight"), True: (".lora_embedding_A", ".lora_embedding_B")}


@dataclass
class LoraFactor:
    """One adapted module: ΔW = scale · B @ A, transposed when `transpose` (embeddings, fan_in_fan_out)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    transpose: bool = False
    embedding: bool = False

    def delta(self) -> torch.Tensor:
        d = self.scale * (self.b.float() @ self.a.float())
        return d.T if self.transpose else d


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter: its config and one factor per adapted module (keyed by the base weight's name)."""

    folder: Path
    config: dict
    factors: dict[str, LoraFactor] = field(default_factory=dict)


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    # peft's get_pattern_key: the first pattern matching the end of the dotted module name wins.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: str | Path) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder; refuse adapter kinds whose change is not a plain low-rank ΔW."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ModelError(
            f"'{folder}' is a {kind} adapter; merge-models combines LoRA adapters (ΔW = B·A) or whole models. "
            "Merge this adapter into its base first (`tunelab export RUN --format hf`) and merge the full models."
        )
    if config.get("use_dora"):
        raise ModelError(
            f"'{folder}' is a DoRA adapter: its change depends on the base weight's norm, so it is not a sum of "
            "low-rank terms that can be mixed. Export it as a full model (`tunelab export RUN --format hf`) and "
            "merge the full models instead."
        )
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ModelError(
            f"Adapter folder '{folder}' has no {ADAPTER_WEIGHTS}. Save it with safetensors (peft's default)."
        )
    tensors = load_file(path)
    adapter = LoraAdapter(folder=folder, config=config)
    leftovers = []
    for key, value in tensors.items():
        name = key.removeprefix(PREFIX)
        if name.endswith(".lora_A.weight"):
            module, embedding = name.removesuffix(".lora_A.weight"), False
            b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        elif name.endswith(".lora_embedding_A"):
            module, embedding = name.removesuffix(".lora_embedding_A"), True
            b_key = key.replace(".lora_embedding_A", ".lora_embedding_B")
        elif name.endswith((".lora_B.weight", ".lora_embedding_B", ".base_layer.weight")):
            continue  # B is read with its A; peft saves a copy of an adapted embedding's base weight
        else:
            leftovers.append(key)
            continue
        r = value.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        transpose = embedding or bool(config.get("fan_in_fan_out"))
        adapter.factors[f"{module}.weight"] = LoraFactor(value, tensors[b_key], scale, transpose, embedding)
    if leftovers:
        shown = ", ".join(leftovers[:3]) + (" ..." if len(leftovers) > 3 else "")
        raise ModelError(
            f"Adapter '{folder}' holds weights other than LoRA factors ({shown}), e.g. modules_to_save or a bias; "
            "merge-models cannot mix those as low-rank changes. Export the run as a full model "
            "(`tunelab export RUN --format hf`) and merge full models."
        )
    return adapter


def concat_factors(terms: list[tuple[LoraFactor, float]]) -> LoraFactor:
    """Σ c_i·ΔW_i as one exact low-rank factor pair: A = [A_1; ...; A_n], B = [c_1 s_1 B_1, ..., c_n s_n B_n].

    The rank is the sum of the ranks and the scale is 1. Averaging the A's and the B's separately (peft's
    `linear` combination for same-rank adapters) would instead give (Σ c B)(Σ c A), which has cross terms
    B_i A_j that neither adapter learnt.
    """
    first = terms[0][0]
    a = torch.cat([f.a.float() for f, _ in terms], dim=0)
    b = torch.cat([c * f.scale * f.b.float() for f, c in terms], dim=1)
    return LoraFactor(a, b, 1.0, first.transpose, first.embedding)


def svd_factor(delta: torch.Tensor, rank: int, transpose: bool, embedding: bool) -> tuple[LoraFactor, float]:
    """The best rank-`rank` factors of a merged ΔW (truncated SVD), and the relative Frobenius error left out."""
    matrix = delta.T if transpose else delta
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    k = min(rank, s.numel())
    total = float(s.pow(2).sum())
    error = math.sqrt(float(s[k:].pow(2).sum()) / total) if total > 0 else 0.0
    return LoraFactor(vh[:k].contiguous(), (u[:, :k] * s[:k]).contiguous(), 1.0, transpose, embedding), error


def write_adapter(factors: dict[str, LoraFactor], template: dict, out: Path) -> None:
    """Write factors (scale 1) as a PEFT adapter: every module padded with zero rows to one rank r, alpha = r.

    Zero padding keeps the product exact and spares a `rank_pattern` entry per module when modules end up with
    different ranks (a module only some adapters touched).
    """
    rank = max(f.a.shape[0] for f in factors.values())
    tensors: dict[str, torch.Tensor] = {}
    for weight_name, f in factors.items():
        pad = rank - f.a.shape[0]
        a = torch.cat([f.a, f.a.new_zeros(pad, f.a.shape[1])]) if pad else f.a
        b = torch.cat([f.b, f.b.new_zeros(f.b.shape[0], pad)], dim=1) if pad else f.b
        module = PREFIX + weight_name.removesuffix(".weight")
        suffix_a, suffix_b = _SUFFIXES[f.embedding]
        tensors[module + suffix_a] = a.contiguous()
        tensors[module + suffix_b] = b.contiguous()
    config = dict(template)
    config.update(
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted(n.removesuffix(".weight") for n in factors),
        init_lora_weights=True,
        inference_mode=True,
        layers_to_transform=None,
        layers_pattern=None,
        exclude_modules=None,
        modules_to_save=None,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
