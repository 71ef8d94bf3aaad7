"""`tunelab export` (merged HF folder, PEFT adapter, GGUF file), `tunelab merge` (the HF export into RUN/merged)
and `tunelab merge-models` (mergekit-style merges of runs, models and adapters)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tunelab.core.errors import ConfigError, RunError
from tunelab.export.formats import export as export_as
from tunelab.export.gguf import verify_gguf
from tunelab.export.merging.config import load_merge_config, parse_merge_config
from tunelab.export.merging.merge import merge_models as run_merge
from tunelab.methods.trained import is_run

console = Console()


def export(args: argparse.Namespace) -> None:
    out = export_as(args.run, args.format, args.out, quant=args.quant, dtype=args.dtype)
    if args.format == "gguf":
        summary = verify_gguf(out)
        size_mb = out.stat().st_size / 1e6
        console.print(f"GGUF ({args.quant}) written to {out}: {len(summary.tensors)} tensors, {size_mb:.1f} MB")
        console.print("  run it with llama.cpp (`llama-cli -m FILE`) or Ollama (`FROM ./FILE` in a Modelfile)")
    elif args.format == "peft":
        console.print(f"PEFT adapter written to {out} (peft's PeftModel.from_pretrained, vLLM --lora-modules)")
    else:
        console.print(f"merged model written to {out} (transformers AutoModelForCausalLM, vLLM, TGI)")


def merge(args: argparse.Namespace) -> None:
    """`tunelab merge RUN`: `tunelab export RUN --format hf` writing to RUN/merged unless --out says otherwise."""
    if not is_run(args.run):
        raise RunError(f"'{args.run}' is not a tunelab run folder (no config.yaml). Give the folder `train` wrote.")
    out = export_as(args.run, "hf", args.out or Path(args.run) / "merged")
    console.print(f"merged model written to {out} (loads with transformers' AutoModelForCausalLM)")


def recipe_from_args(args: argparse.Namespace) -> dict:
    """A mergekit-style recipe dict from --method/--base/--model/--weight/--density flags."""
    models = args.model or []
    if not args.method or not models:
        raise ConfigError("Give a recipe file (`tunelab merge-models merge.yaml --out DIR`) or --method and --model.")
    for flag in ("weight", "density"):
        values = getattr(args, flag) or []
        if len(values) not in (0, 1, len(models)):
            raise ConfigError(
                f"--{flag} was given {len(values)} times for {len(models)} --model: give it once (for all) or once "
                "per model, in the same order."
            )
    entries = []
    for i, spec in enumerate(models):
        params = {}
        for flag in ("weight", "density"):
            values = getattr(args, flag) or []
            if values:
                params[flag] = values[i] if len(values) > 1 else values[0]
        entries.append({"model": spec, "parameters": params})
    parameters = {
        k: v
        for k, v in (("normalize", args.normalize), ("lambda", args.lam), ("rescale", args.rescale))
        if v is not None
    }
    raw = {"merge_method": args.method, "models": entries, "parameters": parameters}
    raw.update(
        {k: v for k, v in (("base_model", args.base), ("dtype", args.dtype), ("rank", args.rank)) if v is not None}
    )
    raw.update(seed=args.seed, output=args.output)
    return raw


def merge_models(args: argparse.Namespace) -> None:
    if args.recipe:
        if args.method or args.model:
            raise ConfigError("Give either a recipe file or --method/--model flags, not both.")
        cfg = load_merge_config(args.recipe)
    else:
        cfg = parse_merge_config(recipe_from_args(args))
    report = run_merge(cfg, args.out)
    if report.kind == "adapter":
        note = (
            f"; SVD rank {cfg.rank}, worst relative error {report.svd_error:.3g}"
            if report.svd_error is not None
            else ""
        )
        console.print(f"{report.method}: PEFT adapter with {report.tensors} modules written to {report.out}{note}")
    else:
        console.print(
            f"{report.method}: {report.changed} of {report.tensors} tensors changed; model written to {report.out} "
            "(transformers AutoModelForCausalLM / AutoModel)"
        )
