"""`tunelab export --format peft`: a LoRA run's adapter alone, in the PEFT format (adapter_config.json +
adapter_model.safetensors + tokenizer) that peft, vLLM `--lora-modules` and `tunelab serve --adapter` read."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.core.files import replacing_dir
from tunelab.export.errors import ExportError
from tunelab.methods.trained import check_replaceable, is_run, read_run

# What a PEFT adapter folder may carry: configs, safetensors weights, tokenizer files. Never pickles (.bin, .pt).
_ADAPTER_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".md")


def export_peft(spec: str, out: str | Path) -> Path:
    """Copy a LoRA run's adapter (adapter_config.json + adapter_model.safetensors + tokenizer) to `out`."""
    if not is_run(spec):
        raise ExportError(f"'{spec}' is not a tunelab run folder, so it has no adapter. Give the folder `train` wrote.")
    run = read_run(spec)
    saved = run.artifact
    if run.method != "lora":
        raise ExportError(
            f"Run '{spec}' trained with method '{run.method}', which changes whole weights, so there is no "
            "adapter to export. Use --format hf (or gguf) for this run."
        )
    if not (saved / "adapter_model.safetensors").is_file():
        raise ExportError(f"Run '{spec}' has no '{saved}/adapter_model.safetensors': it did not finish. Resume it.")
    out = Path(out)
    check_replaceable(out)
    # Into a folder beside `out`, renamed into place: a failure leaves what `out` held before.
    with replacing_dir(out, f"the adapter ({out})", f"run the command again ('{out}' was left as it was).") as tmp:
        for item in saved.iterdir():
            if item.is_file() and item.suffix in _ADAPTER_SUFFIXES:
                shutil.copy2(item, tmp / item.name)
    return out
