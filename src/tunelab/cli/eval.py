"""`tunelab eval`: a run, a model or an ensemble of them scored on a data file (generation metrics, or a classifier's
metrics) with confidence intervals, optionally as an in-context baseline with k demonstrations; or two runs or
models (or a run and its base model) scored on the same rows and compared with paired tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.cli.eval_harness import evaluate_harness
from tunelab.cli.eval_suites import evaluate_suites
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.core.files import write_text
from tunelab.data.load import load_examples
from tunelab.data.records import Example
from tunelab.eval.calibration import reliability_diagram
from tunelab.eval.classify import classifier_report, evaluate_file
from tunelab.eval.compare import Comparison, summarize
from tunelab.eval.evaluate import generated_labels, generation_metrics, write_predictions
from tunelab.eval.fewshot.baseline import with_pool_shots
from tunelab.eval.fewshot.context import ContextLimit, context_summary
from tunelab.eval.report import ReportInput, write_report
from tunelab.eval.structured import load_schema
from tunelab.eval.table import comparison_table
from tunelab.export.ensemble.combine import Combine
from tunelab.export.ensemble.model import EnsembleModel
from tunelab.methods.trained import is_run, load_trained, read_run

console = Console()
Scored = tuple[dict[str, float], list[dict[str, Any]]]


def evaluate(args: argparse.Namespace) -> None:
    if args.harness:  # lm-evaluation-harness tasks: their own module
        return evaluate_harness(args)
    if not args.data:
        raise ConfigError("tunelab eval needs --data (a JSONL file with reference answers), or --harness TASKS.")
    if args.suite:  # robustness / bias suites: their own module
        return evaluate_suites(args)
    if not 0 < args.confidence < 1 or args.resamples < 1:
        raise ConfigError(
            f"--confidence must be between 0 and 1 (e.g. 0.95) and --resamples at least 1, got {args.confidence} "
            f"and {args.resamples}."
        )
    if args.base:
        return _compare(args, [_base_of(args.model), args.model[0]])
    if len(args.model) > 1 and args.ensemble is None and args.weights is None:
        return _compare(args, args.model)
    name = " + ".join(Path(spec).name or spec for spec in args.model)
    first = args.model[0]
    if len(args.model) == 1 and _is_classifier(first):  # a task head
        metrics, predictions = evaluate_file(first, args.data, args.batch_size)
    else:
        model, tokenizer = load_model_or_ensemble(args.model, args.ensemble or "probs", args.weights)
        metrics, predictions = _generate(model, tokenizer, _examples(args), args)
    out = write_predictions(predictions, args.out or "predictions.jsonl")
    summary = summarize({name: (metrics, predictions)}, confidence=args.confidence, resamples=args.resamples)
    extras = _write_extras(out.with_name(out.stem), predictions, first if _is_classifier(first) else None, summary)
    console.print(comparison_table(summary, title=f"{args.data} ({len(predictions)} examples)"))
    console.print(f"per-example predictions: {out}" + "".join(f"\n{what}: {path}" for what, path in extras))
    _report(f"{name} on {args.data}", summary, {name: predictions}, out.parent)


def _compare(args: argparse.Namespace, specs: list[str]) -> None:
    """Two runs or models scored on the same rows: both predictions, the side-by-side table with intervals and
    paired tests, and comparison.json (`Comparison.to_dict()` with the sources and the data file)."""
    if len(specs) != 2:
        raise ConfigError(
            f"`tunelab eval` compares two models, got {len(specs)}: give two runs or models (or one run with "
            "--base), or answer as one ensemble with --ensemble probs|logits."
        )
    names = _column_names(specs)
    examples = _examples(args)
    out = Path(args.out or "comparison")
    columns: dict[str, Scored] = {}
    for k, (name, spec) in enumerate(zip(names, specs, strict=True), start=1):
        console.print(f"scoring {name} ({spec})")
        columns[name] = _score(spec, examples, args)
        write_predictions(columns[name][1], out / f"predictions_{k}.jsonl")
    comparison = summarize(columns, confidence=args.confidence, resamples=args.resamples)
    if not comparison.paired:
        raise TunelabError(
            f"{specs[0]} and {specs[1]} were not scored on the same rows (a classifier is scored on its labelled rows, "
            "a generator on its prompts), so they cannot be paired: compare two classify runs or two generators."
        )
    _write_json(out / "comparison.json", {**comparison.to_dict(), "sources": specs, "data": str(args.data)})
    console.print(comparison_table(comparison, title=f"{args.data} ({comparison.examples} examples, paired)"))
    console.print(f"predictions and comparison.json: {out}")
    _report(f"{names[0]} vs {names[1]} on {args.data}", comparison, _rows_of(columns), out)


def _rows_of(columns: dict[str, Scored]) -> dict[str, list[dict[str, Any]]]:
    return {name: rows for name, (_, rows) in columns.items()}


def _report(title: str, summary: Comparison, columns: dict[str, list[dict[str, Any]]], folder: Path) -> None:
    """report.html and report.md in `folder`, with the suites' and calibration files found there."""
    html_path, _ = write_report(ReportInput(title, summary.to_dict(), columns, folder), folder)
    console.print(f"report: {html_path} (and report.md)")


def _column_names(specs: list[str]) -> list[str]:
    names = [Path(spec).name or spec for spec in specs]
    return names if names[0] != names[1] else [f"{n} ({k})" for k, n in enumerate(names, start=1)]


def _base_of(specs: list[str]) -> str:
    """The base model of the one run `--base` compares against."""
    if len(specs) != 1 or not is_run(specs[0]):
        raise ConfigError("--base compares one run folder with the base model it was trained from: give one run.")
    if _is_classifier(specs[0]):
        raise ConfigError(
            f"'{specs[0]}' is a classifier; its base model has no trained head to score. Compare two classify runs."
        )
    return read_run(specs[0]).source


def _is_classifier(spec: str) -> bool:
    return is_run(spec) and read_run(spec).objective == "classify"


def _score(spec: str, examples: list[Example], args: argparse.Namespace) -> Scored:
    """One side of a comparison: a classify run by its head, anything else by its generated answers."""
    if _is_classifier(spec):
        return evaluate_file(spec, args.data, args.batch_size)
    model, tokenizer = load_trained(spec, dtype=torch.float32)
    return _generate(model, tokenizer, examples, args)


def _examples(args: argparse.Namespace) -> list[Example]:
    examples = load_examples([args.data]).examples
    if not examples:
        raise TunelabError(f"'{args.data}' holds no usable rows to evaluate on.")
    return examples


def _generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: list[Example], args) -> Scored:
    """Generated answers scored (with the k-shot demonstrations of --shots, fitted to the model's context)."""
    if args.shots:  # an in-context baseline: the same rows and metrics, k demonstrations before each question
        limit = ContextLimit.for_model(model, tokenizer, args.max_new_tokens, args.shot_overflow, args.system)
        examples = with_pool_shots(examples, args.shot_pool, args.shots, selection=args.shot_selection,
                                   seed=args.seed, layout=args.shot_layout, embedder=args.shot_embedder,
                                   limit=limit)  # fmt: skip
        fit = context_summary(examples)
        if fit["prompts_shortened"]:
            console.print(f"{fit['prompts_shortened']} prompt(s) were over the model's context: {fit['shots_dropped']} "
                          "demonstration(s) left out (--shot-overflow drop)")  # fmt: skip
    return generation_metrics(
        model, tokenizer, examples, max_examples=args.max_examples, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, system_prompt=args.system, precision="bf16" if args.bf16 else "fp32",
        schema=load_schema(args.json_schema) if args.json_schema else None, similarity_encoder=args.similarity,
        long_prompts=args.long_prompts,
    )  # fmt: skip


def _write_extras(
    stem: Path, rows: list[dict[str, Any]], classifier: str | None, summary: Comparison
) -> list[tuple[str, Path]]:
    """Beside the predictions: <stem>_stats.json (the intervals), and for labels <stem>_labels.json (confusion
    matrix, per-class scores) and, for a classifier, <stem>_reliability.png. Returns what was written."""
    written = [("intervals", _write_json(Path(f"{stem}_stats.json"), summary.to_dict()))]
    if classifier is not None and rows and "confidence" in rows[0]:
        labels, bins = classifier_report(rows, [])
        document = {**labels.to_dict(), "calibration": bins.to_dict()}
        written.append(("labels", _write_json(Path(f"{stem}_labels.json"), document)))
        picture = reliability_diagram(bins, f"{stem}_reliability.png", Path(classifier).name)
        written.append(("reliability diagram", picture))
    elif (report := generated_labels(rows)) is not None:
        written.append(("labels", _write_json(Path(f"{stem}_labels.json"), report.to_dict())))
    return written


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(document, indent=2, ensure_ascii=False))
    return path


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
