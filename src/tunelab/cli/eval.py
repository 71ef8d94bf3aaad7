"""`tunelab eval`: a run, a model or an ensemble of them scored on a data file (generation metrics, or a classifier's
metrics), optionally as an in-context baseline with k demonstrations."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.cli.eval_suites import evaluate_suites
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.data.load import load_examples
from tunelab.eval.classify import evaluate_file
from tunelab.eval.evaluate import generation_metrics, metrics_table, write_predictions
from tunelab.eval.fewshot.baseline import with_pool_shots
from tunelab.eval.fewshot.context import ContextLimit, context_summary
from tunelab.export.ensemble.combine import Combine
from tunelab.export.ensemble.model import EnsembleModel
from tunelab.methods.trained import is_run, load_trained, read_run

console = Console()


def evaluate(args: argparse.Namespace) -> None:
    if args.suite:  # robustness / bias suites: their own module
        return evaluate_suites(args)
    name = " + ".join(args.model)
    first = args.model[0]
    if len(args.model) == 1 and is_run(first) and read_run(first).objective == "classify":  # a task head
        metrics, predictions = evaluate_file(first, args.data, args.batch_size)
        out = write_predictions(predictions, args.out or "predictions.jsonl")
        console.print(metrics_table({first: metrics}, title=f"{args.data} ({len(predictions)} examples)"))
        console.print(f"per-example predictions: {out}")
        return
    examples = load_examples([args.data]).examples
    if not examples:
        raise TunelabError(f"'{args.data}' holds no usable rows to evaluate on.")
    model, tokenizer = load_model_or_ensemble(args.model, args.ensemble, args.weights)
    if args.shots:  # an in-context baseline: the same rows and metrics, k demonstrations before each question
        limit = ContextLimit.for_model(model, tokenizer, args.max_new_tokens, args.shot_overflow, args.system)
        examples = with_pool_shots(examples, args.shot_pool, args.shots, selection=args.shot_selection,
                                   seed=args.seed, layout=args.shot_layout, embedder=args.shot_embedder,
                                   limit=limit)  # fmt: skip
        fit = context_summary(examples)
        if fit["prompts_shortened"]:
            console.print(f"{fit['prompts_shortened']} prompt(s) were over the model's context: {fit['shots_dropped']} "
                          "demonstration(s) left out (--shot-overflow drop)")  # fmt: skip
    metrics, predictions = generation_metrics(
        model, tokenizer, examples, max_examples=args.max_examples, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, system_prompt=args.system, precision="bf16" if args.bf16 else "fp32",
    )  # fmt: skip
    out = Path(args.out or "predictions.jsonl")
    write_predictions(predictions, out)
    console.print(metrics_table({name: metrics}, title=f"{args.data} ({len(predictions)} examples)"))
    console.print(f"per-example predictions: {out}")


def load_model_or_ensemble(
    specs: list[str], combine: Combine, weights: list[float] | None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """One model, or several answering as one (`EnsembleModel`); the members must share a tokenizer."""
    if weights is not None and len(weights) != len(specs):
        raise ConfigError(f"--weights gives {len(weights)} weights for {len(specs)} models: give one per model.")
    loaded = [load_trained(spec, dtype=torch.float32) for spec in specs]
    if len(loaded) == 1:
        return loaded[0]
    vocab = loaded[0][1].get_vocab()
    for spec, (_, tokenizer) in zip(specs[1:], loaded[1:], strict=True):
        if tokenizer.get_vocab() != vocab:
            raise ConfigError(
                f"'{spec}' uses another tokenizer than '{specs[0]}', so their next-token distributions cannot be "
                "combined. Ensemble models trained from the same base model."
            )
    if any(w < 0 for w in weights or []) or (weights is not None and sum(weights) <= 0):
        raise ConfigError(f"--weights must be non-negative with a positive sum, got {weights}.")
    return EnsembleModel([m for m, _ in loaded], weights, combine).eval(), loaded[0][1]
