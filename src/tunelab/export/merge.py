"""Merge a trained adapter into its base: W_ft = W_pt + ΔW, written as a standalone Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.errors import RunError
from tunelab.runs import is_run, load_for_inference


def merge_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `run_dir/merged` (or `out`): full weights in fp32 safetensors plus tokenizer and chat template."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise RunError(f"'{run_dir}' is not a tunelab run folder (no config.yaml). Give the folder `train` wrote.")
    out = Path(out) if out else run_dir / "merged"
    # Merge in fp32: adding a small ΔW to bf16 weights would round much of it away.
    model, tokenizer = load_for_inference(str(run_dir), dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
