"""Where the tensors of a merge come from: full-model folders read lazily from safetensors, and LoRA adapters
read as base + ΔW. Model specs are resolved the way the rest of tunelab resolves them (runs, folders, embedded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from tunelab.core.errors import ModelError
from tunelab.export.merging.lora import LoraAdapter, is_adapter
from tunelab.methods.trained import artifact_dir, is_run
from tunelab.models.load import resolve_source
from tunelab.recipes.runs import run_config

INDEX = "model.safetensors.index.json"


class ModelWeights:
    """A HF model folder's tensors, opened lazily (one safetensors file or shards with an index)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if (folder / INDEX).is_file():
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
            self.shard_of = {name: folder / shard for name, shard in weight_map.items()}
        elif (folder / "model.safetensors").is_file():
            with safe_open(folder / "model.safetensors", "pt") as f:
                self.shard_of = {name: folder / "model.safetensors" for name in f.keys()}  # noqa: SIM118
        else:
            raise ModelError(
                f"'{folder}' holds no safetensors weights (model.safetensors or a sharded index). Re-save the model "
                "with save_pretrained(safe_serialization=True); merge-models does not read pickled .bin files."
            )
        self._open: dict[Path, safe_open] = {}

    def names(self) -> list[str]:
        return list(self.shard_of)

    def shards(self) -> dict[Path, list[str]]:
        """Tensor names grouped by file, in file order."""
        out: dict[Path, list[str]] = {}
        for name, shard in self.shard_of.items():
            out.setdefault(shard, []).append(name)
        return out

    def get(self, name: str) -> torch.Tensor:
        shard = self.shard_of[name]
        if shard not in self._open:
            self._open[shard] = safe_open(shard, "pt")
        return self._open[shard].get_tensor(name)


class AdapterWeights:
    """A base model with a LoRA adapter applied: W0 + ΔW for adapted weights, W0 elsewhere."""

    def __init__(self, base: ModelWeights, adapter: LoraAdapter) -> None:
        missing = [n for n in adapter.factors if n not in base.shard_of]
        if missing:
            raise ModelError(
                f"Adapter '{adapter.folder}' adapts weights the base model '{base.folder}' does not have "
                f"({', '.join(missing[:3])}). Was it trained on another model? Set base_model to its base."
            )
        self.base, self.adapter = base, adapter

    def names(self) -> list[str]:
        return self.base.names()

    def get(self, name: str) -> torch.Tensor:
        w = self.base.get(name)
        factor = self.adapter.factors.get(name)
        return w if factor is None else (w.float() + factor.delta()).to(w.dtype)


@dataclass(frozen=True)
class MergeInput:
    """A resolved model entry: a full-model folder, or an adapter folder plus the base it was trained on."""

    spec: str
    folder: Path
    adapter: bool
    base_spec: str | None = None
    """For adapters: the base named by the run config or the adapter config (None when unknown)."""


def resolve_input(spec: str) -> MergeInput:
    """A run folder, PEFT LoRA adapter folder, mergekit 'BASE+ADAPTER', HF folder or embedded model name."""

    path = Path(spec).expanduser()
    if is_run(path):
        cfg = run_config(path)
        saved = artifact_dir(path, cfg.method.name)
        if is_adapter(saved):
            return MergeInput(spec, saved, True, cfg.model.source)
        if (saved / "config.json").is_file():
            return MergeInput(spec, saved, False)
        raise ModelError(
            f"Run '{spec}' (method {cfg.method.name}) has no LoRA adapter or full model in '{saved}' to merge. "
            "Merge runs trained with lora or a full/freeze method, or export this run as a full model first."
        )
    if is_adapter(path):
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return MergeInput(spec, path, True, base)
    if "+" in spec and not path.exists():
        base, _, adapter = spec.rpartition("+")
        if is_adapter(adapter):
            return MergeInput(spec, Path(adapter), True, base)
    return MergeInput(spec, resolve_source(spec).materialize(), False)


def base_folder(spec: str) -> Path:
    """The HF folder of a base model spec (a run folder counts as its trained model)."""
    resolved = resolve_input(spec)
    if resolved.adapter:
        raise ModelError(f"base_model '{spec}' is an adapter; give the model it was trained on.")
    return resolved.folder
