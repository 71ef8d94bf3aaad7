"""`tunelab export`: one function per output format, and `export` to pick one by name.

- hf: the merged standalone folder (transformers, vLLM, TGI load it as any Hub model).
- peft: the adapter alone (peft, vLLM `--lora-modules`, `tunelab serve --adapter`).
- gguf: one file for llama.cpp and Ollama, f16 or q8_0.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from tunelab.export.errors import ExportError
from tunelab.export.gguf import Quant, verify_gguf, write_gguf
from tunelab.export.hf import Dtype, save_merged
from tunelab.recipes.runs import artifact_dir, is_run, run_config

Format = Literal["hf", "peft", "gguf"]
FORMATS: tuple[str, ...] = ("hf", "peft", "gguf")

# What a PEFT adapter folder may carry: configs, safetensors weights, tokenizer files. Never pickles (.bin, .pt).
_ADAPTER_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".md")


def default_out(spec: str, fmt: Format, quant: Quant = "f16") -> Path:
    """Where an export goes when no --out is given: inside the run folder, or next to the current directory."""
    base = Path(spec) / "export" if is_run(spec) else Path(f"{Path(spec).name}-export")
    return base / (f"model-{quant}.gguf" if fmt == "gguf" else fmt)


def export_hf(spec: str, out: str | Path, dtype: Dtype = "fp32", max_shard_size: str = "2GB") -> Path:
    """The merged model as a standalone HF folder (safetensors, sharded past `max_shard_size`, tokenizer)."""
    return save_merged(spec, out, dtype=dtype, max_shard_size=max_shard_size)


def export_peft(spec: str, out: str | Path) -> Path:
    """Copy a LoRA run's adapter (adapter_config.json + adapter_model.safetensors + tokenizer) to `out`."""
    if not is_run(spec):
        raise ExportError(f"'{spec}' is not a tunelab run folder, so it has no adapter. Give the folder `train` wrote.")
    cfg = run_config(Path(spec))
    saved = artifact_dir(Path(spec), cfg.method.name)
    if cfg.method.name != "lora":
        raise ExportError(
            f"Run '{spec}' trained with method '{cfg.method.name}', which changes whole weights, so there is no "
            "adapter to export. Use --format hf (or gguf) for this run."
        )
    if not (saved / "adapter_model.safetensors").is_file():
        raise ExportError(f"Run '{spec}' has no '{saved}/adapter_model.safetensors': it did not finish. Resume it.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for item in saved.iterdir():
        if item.is_file() and item.suffix in _ADAPTER_SUFFIXES:
            shutil.copy2(item, out / item.name)
    return out


def export_gguf(spec: str, out: str | Path, quant: Quant = "f16") -> Path:
    """Merge `spec` and write it as one GGUF file; the file is read back once to check it is whole."""
    with tempfile.TemporaryDirectory(prefix="tunelab-gguf-") as tmp:
        merged = save_merged(spec, Path(tmp) / "merged")
        path = write_gguf(merged, out, quant)
    verify_gguf(path)
    return path


def export(spec: str, fmt: Format, out: str | Path | None = None, quant: Quant = "f16", dtype: Dtype = "fp32") -> Path:
    """Export a run folder (or, for hf and gguf, any model source) in `fmt`; returns what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(FORMATS)}.")
    target = Path(out) if out else default_out(spec, fmt, quant)
    if fmt == "hf":
        return export_hf(spec, target, dtype=dtype)
    if fmt == "peft":
        return export_peft(spec, target)
    return export_gguf(spec, target, quant)
