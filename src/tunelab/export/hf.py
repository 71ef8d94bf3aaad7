"""Merge a trained adapter into its base: W_ft = W_pt + ΔW, written as a standalone Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from tunelab.core.errors import RunError
from tunelab.recipes.runs import is_run, load_for_inference

Dtype = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def merge_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `run_dir/merged` (or `out`): full weights in fp32 safetensors plus tokenizer and chat template."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise RunError(f"'{run_dir}' is not a tunelab run folder (no config.yaml). Give the folder `train` wrote.")
    return save_merged(str(run_dir), Path(out) if out else run_dir / "merged")


def save_merged(spec: str, out: str | Path, dtype: Dtype = "fp32", max_shard_size: str = "2GB") -> Path:
    """A run folder or any model source, adapters merged, saved to `out` as a standalone HF folder.

    Weights go to safetensors, split into `max_shard_size` shards with an index when larger (the layout
    transformers and vLLM both read); the tokenizer, its chat template and the generation config go along.
    """
    out = Path(out)
    # Merge in fp32 whatever the output dtype: adding a small ΔW to bf16 weights would round much of it away.
    model, tokenizer = load_for_inference(spec, dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(DTYPES[dtype])
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    return out
