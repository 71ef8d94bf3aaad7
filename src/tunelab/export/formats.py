"""`tunelab export`: one module per output format (`hf`, `peft`, `gguf`), and `export` to pick one by name.

- hf: the merged standalone folder (transformers, vLLM, TGI load it as any Hub model).
- peft: the adapter alone (peft, vLLM `--lora-modules`, `tunelab serve --adapter`).
- gguf: one file for llama.cpp and Ollama, f16 or q8_0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tunelab.export.errors import ExportError
from tunelab.export.gguf import Quant, export_gguf
from tunelab.export.hf import export_hf
from tunelab.export.peft import export_peft
from tunelab.methods.trained import Dtype, is_run

Format = Literal["hf", "peft", "gguf"]
FORMATS: tuple[str, ...] = ("hf", "peft", "gguf")


def default_out(spec: str, fmt: Format, quant: Quant = "f16") -> Path:
    """Where an export goes when no --out is given: inside the run folder, or next to the current directory."""
    base = Path(spec) / "export" if is_run(spec) else Path(f"{Path(spec).name}-export")
    return base / (f"model-{quant}.gguf" if fmt == "gguf" else fmt)


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
