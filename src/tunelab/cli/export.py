"""The `tunelab export` sub-command (thin: argument parsing, then `tunelab.export.formats.export`)."""

from __future__ import annotations

import argparse

from rich.console import Console

console = Console()
# Spelled out here, not imported from formats.py, so `tunelab --help` does not import torch.
FORMATS = ("hf", "peft", "gguf")


def cmd_export(args: argparse.Namespace) -> None:
    from tunelab.export.formats import export
    from tunelab.export.gguf import verify_gguf

    out = export(args.run, args.format, args.out, quant=args.quant, dtype=args.dtype)
    if args.format == "gguf":
        summary = verify_gguf(out)
        size_mb = out.stat().st_size / 1e6
        console.print(f"GGUF ({args.quant}) written to {out}: {len(summary.tensors)} tensors, {size_mb:.1f} MB")
        console.print("  run it with llama.cpp (`llama-cli -m FILE`) or Ollama (`FROM ./FILE` in a Modelfile)")
    elif args.format == "peft":
        console.print(f"PEFT adapter written to {out} (peft's PeftModel.from_pretrained, vLLM --lora-modules)")
    else:
        console.print(f"merged model written to {out} (transformers AutoModelForCausalLM, vLLM, TGI)")


def add_export_command(sub: argparse._SubParsersAction) -> None:
    """Register `tunelab export` on the CLI's sub-parsers."""
    help_text = "Export a run (or model) as a merged HF folder, a PEFT adapter or a GGUF file."
    p = sub.add_parser("export", help=help_text, description=help_text)
    p.set_defaults(func=cmd_export)
    p.add_argument("run", help="run folder (or, for hf and gguf, any model source)")
    p.add_argument("--format", required=True, choices=FORMATS, help="hf: merged folder; peft: adapter; gguf: file")
    p.add_argument("--quant", default="f16", choices=["f16", "q8_0", "f32"], help="GGUF weight type (default f16)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="hf weight dtype")
    p.add_argument("--out", help="output folder or .gguf file (default RUN/export/...)")
