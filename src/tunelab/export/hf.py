"""`tunelab export --format hf` (and `tunelab merge`): the trained adapter merged into its base, W_ft = W_pt + ΔW,
as a standalone Hugging Face folder that transformers, vLLM and TGI load as any Hub model."""

from __future__ import annotations

from pathlib import Path

from tunelab.methods.trained import Dtype, save_merged


def export_hf(spec: str, out: str | Path, dtype: Dtype = "fp32", max_shard_size: str = "2GB") -> Path:
    """The merged model as a standalone HF folder (safetensors, sharded past `max_shard_size`, tokenizer)."""
    return save_merged(spec, out, dtype=dtype, max_shard_size=max_shard_size)
