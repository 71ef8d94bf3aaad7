"""The `tunelab merge-models` sub-command (thin: a recipe from YAML or flags, then `merge_models`)."""

from __future__ import annotations

import argparse

from rich.console import Console

from tunelab.core.errors import ConfigError

console = Console()
# Spelled out, not imported from tensors.py, so `tunelab --help` does not import torch.
METHOD_NAMES = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")


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


def cmd_merge_models(args: argparse.Namespace) -> None:
    from tunelab.export.merging.config import load_merge_config, parse_merge_config
    from tunelab.export.merging.merge import merge_models

    if args.recipe:
        if args.method or args.model:
            raise ConfigError("Give either a recipe file or --method/--model flags, not both.")
        cfg = load_merge_config(args.recipe)
    else:
        cfg = parse_merge_config(recipe_from_args(args))
    report = merge_models(cfg, args.out)
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


def add_merge_models_command(sub: argparse._SubParsersAction) -> None:
    """Register `tunelab merge-models` on the CLI's sub-parsers."""
    help_text = "Merge fine-tuned models or LoRA adapters (linear, task arithmetic, TIES, DARE; mergekit recipes)."
    p = sub.add_parser("merge-models", help=help_text, description=help_text)
    p.set_defaults(func=cmd_merge_models)
    p.add_argument("recipe", nargs="?", help="mergekit-style YAML recipe (or use the flags below)")
    p.add_argument("--out", required=True, help="output folder (an HF model folder or a PEFT adapter)")
    p.add_argument("--method", choices=METHOD_NAMES, help="merge method")
    p.add_argument("--base", help="base model the inputs were fine-tuned from (inferred from runs/adapters)")
    p.add_argument("--model", action="append", help="run folder, model folder or adapter; repeat per model")
    p.add_argument("--weight", action="append", type=float, help="weight, once for all or once per --model")
    p.add_argument("--density", action="append", type=float, help="TIES/DARE density, once or per --model")
    p.add_argument("--lambda", dest="lam", type=float, help="scale of the merged task vector (default 1)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None, help="divide by weight sum")
    p.add_argument("--rescale", action=argparse.BooleanOptionalAction, default=None, help="DARE rescaling")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype (default: base's)")
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random masks")
    p.add_argument("--output", choices=["auto", "model", "adapter"], default="auto", help="what to write")
    p.add_argument("--rank", type=int, help="SVD rank for an adapter output of ties/dare")
