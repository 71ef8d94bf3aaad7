"""Run a merge recipe: full models (and adapters applied to their base) into a standalone HF folder, or LoRA
adapters into one PEFT adapter. Tensors are merged one at a time, so memory holds one tensor per input.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from safetensors.torch import save_file

from tunelab.core.errors import ConfigError, ModelError
from tunelab.export.merging.config import MergeConfig, ModelEntry
from tunelab.export.merging.lora import LoraFactor, concat_factors, read_adapter, svd_factor, write_adapter
from tunelab.export.merging.sources import INDEX, AdapterWeights, MergeInput, ModelWeights, base_folder, resolve_input
from tunelab.export.merging.tensors import MERGE_METHODS, linear_merge, merge_deltas, tensor_generator

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RECIPE_FILE = "merge_config.yaml"
Entries = list[tuple[ModelEntry, MergeInput]]
# Files of a model or adapter folder that are not weights: tokenizer, chat template, configs.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class MergeReport:
    """What was written: `kind` is model or adapter; `svd_error` is the largest relative Frobenius error of the
    rank-truncated modules (adapter output of ties/dare only)."""

    out: Path
    kind: Literal["model", "adapter"]
    method: str
    tensors: int
    changed: int
    svd_error: float | None = None


def merge_models(cfg: MergeConfig, out: str | Path) -> MergeReport:
    """Merge as `cfg` says into the folder `out` (created; refused when it exists and is not empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"Output folder '{out}' exists and is not empty. Choose another --out or remove it.")
    method = MERGE_METHODS[cfg.merge_method]
    entries = [(e, resolve_input(e.model)) for e in cfg.models]
    base_spec = cfg.base_model or _common_base([i for _, i in entries])
    if method.needs_base:
        if base_spec is None:
            raise ConfigError(
                f"merge_method {method.name} adds task vectors to a base model, and none is known. Set base_model "
                "(the model the inputs were fine-tuned from)."
            )
        # mergekit lists the base among the models with no parameters; it has no task vector, so it is skipped.
        base_dir = base_folder(base_spec).resolve()
        entries = [(e, i) for e, i in entries if i.adapter or i.folder.resolve() != base_dir]
    if not entries:
        raise ConfigError("The recipe has no models to merge besides the base model. List the fine-tuned models.")
    all_adapters = all(i.adapter for _, i in entries)
    exact_adapter = method.name in ("linear", "task_arithmetic")
    kind = cfg.output if cfg.output != "auto" else ("adapter" if all_adapters and exact_adapter else "model")
    # Written next to `out` and renamed into place at the end, so a failed merge leaves no half-written model.
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        merge = _merge_adapters if kind == "adapter" else _merge_full
        report = merge(cfg, entries, base_spec, partial)
        (partial / RECIPE_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    report.out = out
    return report


def _common_base(inputs: list[MergeInput]) -> str | None:
    bases = {i.base_spec for i in inputs if i.adapter and i.base_spec}
    return next(iter(bases)) if len(bases) == 1 else None


def _merge_full(cfg: MergeConfig, entries: Entries, base_spec: str | None, out: Path) -> MergeReport:
    method = MERGE_METHODS[cfg.merge_method]
    base = ModelWeights(base_folder(base_spec)) if base_spec else None
    sources = []
    for _, inp in entries:
        if inp.adapter:
            if base is None:
                raise ConfigError(f"'{inp.spec}' is an adapter; set base_model to the model it was trained on.")
            sources.append(AdapterWeights(base, read_adapter(inp.folder)))
        else:
            sources.append(ModelWeights(inp.folder))
    layout = base or sources[0]
    for source, (_, inp) in zip(sources, entries, strict=True):
        have = set(source.names())
        missing = [n for n in layout.names() if n not in have]
        if missing:
            raise ModelError(
                f"'{inp.spec}' lacks {len(missing)} tensor(s) of the base layout (e.g. {missing[0]}): the models do "
                "not share an architecture. Merge only models fine-tuned from the same base."
            )
    weights = [cfg.weight(e) for e, _ in entries]
    densities = [cfg.density(e) for e, _ in entries]
    normalize, rescale, lam = cfg.normalize(), cfg.rescale(), cfg.parameters.lambda_
    out.mkdir(parents=True, exist_ok=True)
    tensors = changed = 0
    total_bytes = 0
    for shard, names in layout.shards().items():
        merged: dict[str, torch.Tensor] = {}
        for name in names:
            reference = layout.get(name)
            inputs = [s.get(name).float() for s in sources]
            for t, (_, inp) in zip(inputs, entries, strict=True):
                if t.shape != reference.shape:
                    raise ModelError(
                        f"'{inp.spec}': tensor {name} has shape {tuple(t.shape)}, the base {tuple(reference.shape)} "
                        "(a resized vocabulary?). Merge only models with the same shapes."
                    )
            if method.needs_base:
                b = reference.float()
                deltas = [t - b for t in inputs]
                if all(not d.any() for d in deltas):
                    result = b
                else:
                    gens = [tensor_generator(cfg.seed, name, i) for i in range(len(deltas))]
                    mixed = merge_deltas(
                        method,
                        deltas,
                        weights,
                        densities,
                        normalize=normalize,
                        lam=lam,
                        rescale=rescale,
                        generators=gens,
                    )
                    result = b + mixed
            else:
                result = linear_merge(inputs, weights, normalize=normalize)
            dtype = DTYPES[cfg.dtype] if cfg.dtype else reference.dtype
            merged[name] = result.to(dtype).contiguous()
            changed += int(not torch.equal(merged[name], reference.to(dtype)))
            total_bytes += merged[name].numel() * merged[name].element_size()
            tensors += 1
        save_file(merged, out / shard.name, metadata={"format": "pt"})
    _copy_side_files(layout.folder, out)
    if (layout.folder / INDEX).is_file():
        index = json.loads((layout.folder / INDEX).read_text())
        index.setdefault("metadata", {})["total_size"] = total_bytes
        (out / INDEX).write_text(json.dumps(index, indent=2))
    if cfg.dtype:
        _set_config_dtype(out, cfg.dtype)
    return MergeReport(out, "model", method.name, tensors, changed)


def _merge_adapters(cfg: MergeConfig, entries: Entries, base_spec: str | None, out: Path) -> MergeReport:
    method = MERGE_METHODS[cfg.merge_method]
    if not all(i.adapter for _, i in entries):
        raise ConfigError(
            "output: adapter needs every input to be a LoRA adapter; some are full models. Use output: model."
        )
    adapters = [read_adapter(i.folder) for _, i in entries]
    weights = [cfg.weight(e) for e, _ in entries]
    densities = [cfg.density(e) for e, _ in entries]
    modules = list(dict.fromkeys(n for a in adapters for n in a.factors))
    factors: dict[str, LoraFactor] = {}
    worst: float | None = None
    if method.name in ("linear", "task_arithmetic"):
        total = sum(weights)
        if method.name == "linear":
            if not cfg.normalize() and abs(total - 1) > 1e-6:
                raise ConfigError(
                    f"A linear merge without normalize scales the base weights by the weight sum ({total:g}), which "
                    "no adapter can express. Set parameters.normalize: true, weights summing to 1, or output: model."
                )
            coefs = [w / total for w in weights]
        else:
            scale = cfg.parameters.lambda_ / (total if cfg.normalize() and abs(total) > 1e-8 else 1.0)
            coefs = [w * scale for w in weights]
        for name in modules:
            terms = [(a.factors[name], c) for a, c in zip(adapters, coefs, strict=True) if name in a.factors]
            factors[name] = concat_factors(terms)
    else:
        if cfg.rank is None:
            raise ConfigError(
                f"{method.name} sparsifies ΔW, so the merged change is no longer low-rank: an adapter needs `rank` "
                "(a truncated SVD; its error is reported). Set rank (e.g. the sum of the input ranks) or output: model."
            )
        worst = 0.0
        for name in modules:
            present = next(a.factors[name] for a in adapters if name in a.factors)
            deltas = [a.factors[name].delta() if name in a.factors else None for a in adapters]
            shape = next(d.shape for d in deltas if d is not None)
            deltas = [d if d is not None else torch.zeros(shape) for d in deltas]
            gens = [tensor_generator(cfg.seed, name, i) for i in range(len(deltas))]
            mixed = merge_deltas(
                method, deltas, weights, densities, normalize=cfg.normalize(), lam=cfg.parameters.lambda_,
                rescale=cfg.rescale(), generators=gens,
            )  # fmt: skip
            factors[name], error = svd_factor(mixed, cfg.rank, present.transpose, present.embedding)
            worst = max(worst, error)
    template = dict(adapters[0].config)
    if base_spec:
        template["base_model_name_or_path"] = base_spec
    write_adapter(factors, template, out)
    _copy_side_files(adapters[0].folder, out, skip=("adapter_config.json", "README.md"))
    return MergeReport(out, "adapter", method.name, len(factors), len(factors), worst)


def _copy_side_files(folder: Path, out: Path, skip: tuple[str, ...] = (INDEX, "README.md")) -> None:
    for item in folder.iterdir():
        wanted = item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES) and item.name not in skip
        if wanted and not (out / item.name).exists():
            shutil.copy2(item, out / item.name)


def _set_config_dtype(out: Path, dtype: str) -> None:
    path = out / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
