"""`tunelab eval MODEL --harness TASKS`: lm-evaluation-harness tasks (local YAML files with --harness-tasks-dir)
on a run, a merged model or any model source, or on a run and its base model (--base) with paired tests; the
numbers in the same table as every `tunelab eval`, and harness.json plus one predictions file per task and model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console

from tunelab.core.errors import ConfigError
from tunelab.core.files import write_text
from tunelab.eval.compare import Comparison, summarize
from tunelab.eval.evaluate import write_predictions
from tunelab.eval.harness import HarnessResult, run_harness
from tunelab.eval.stats import Interval, PairedTest
from tunelab.eval.table import comparison_table
from tunelab.methods.trained import is_run, load_trained, read_run

console = Console()
HARNESS_FILE = "harness.json"


def evaluate_harness(args: argparse.Namespace) -> None:
    """Run the tasks on each model, then print and write the comparison table (intervals; tests for two models)."""
    if not 0 < args.confidence < 1 or args.resamples < 1:
        raise ConfigError(f"--confidence must be in (0, 1) and --resamples at least 1, got {args.confidence} and "
                          f"{args.resamples}.")  # fmt: skip
    tasks = list(dict.fromkeys(t.strip() for spec in args.harness for t in spec.split(",") if t.strip()))
    specs = _models(args)
    names = ["base", "tuned"] if args.base else [Path(s).name or s for s in specs]
    if len(set(names)) < len(names):
        names = [f"{i}: {n}" for i, n in enumerate(names, start=1)]
    tasks_dir = Path(args.harness_tasks_dir) if args.harness_tasks_dir else None
    results: dict[str, HarnessResult] = {}
    for name, spec in zip(names, specs, strict=True):
        console.print(f"lm-evaluation-harness: {', '.join(tasks)} on {name} ({spec})")
        model, tokenizer = load_trained(spec, dtype=torch.float32)
        results[name] = run_harness(
            model, tokenizer, tasks, tasks_dir, limit=args.max_examples, shots=args.harness_shots,
            batch_size=args.batch_size, system=args.system, chat=args.harness_chat,
        )  # fmt: skip
    comparison = harness_comparison(results, tasks, args.confidence, args.resamples)
    out = Path(args.out) if args.out else (Path(specs[-1]) / "harness" if is_run(specs[-1]) else Path("harness"))
    for k, result in enumerate(results.values(), start=1):
        for task, rows in result.rows.items():
            write_predictions(rows, out / f"predictions_{task}_{k}.jsonl")
    report = {"tasks": tasks, "models": dict(zip(names, specs, strict=True)), "comparison": comparison.to_dict(),
              "lm_eval": {name: r.raw for name, r in results.items()}}  # fmt: skip
    write_text(out / HARNESS_FILE, json.dumps(report, indent=2))
    console.print(comparison_table(comparison, title=f"lm-evaluation-harness: {', '.join(tasks)}"))
    console.print(f"results and per-document predictions: {out}")


def _models(args: argparse.Namespace) -> list[str]:
    if args.base:
        if len(args.model) != 1 or not is_run(args.model[0]):
            raise ConfigError("--base compares one run folder with the base model it was trained from: give one run.")
        return [read_run(args.model[0]).source, args.model[0]]
    if len(args.model) > 2 or args.ensemble is not None:
        raise ConfigError(
            f"--harness scores one model, or two side by side; got {len(args.model)}"
            + (" with --ensemble, which lm-eval cannot drive" if args.ensemble else "")
            + ". Give one or two runs or models."
        )
    return list(args.model)


def harness_comparison(
    results: dict[str, HarnessResult], tasks: list[str], confidence: float, resamples: int
) -> Comparison:
    """Every task's metrics as `task/metric` in one table: intervals from the per-document rows and, for two models
    (the same documents), the paired tests of the second against the first."""
    names = list(results)
    values: dict[str, dict[str, float]] = {n: {} for n in names}
    intervals: dict[str, dict[str, Interval]] = {n: {} for n in names}
    tests: dict[str, PairedTest] = {}
    examples, paired = 0, len(names) == 2
    for task in tasks:
        columns = {name: (r.metrics[task], r.rows[task]) for name, r in results.items()}
        part = summarize(columns, confidence=confidence, resamples=resamples)
        for name in names:
            values[name].update({f"{task}/{m}": v for m, v in part.values[name].items()})
            intervals[name].update({f"{task}/{m}": i for m, i in part.intervals[name].items()})
        tests.update({f"{task}/{m}": t for m, t in part.tests.items()})
        examples, paired = examples + part.examples, paired and part.paired
    return Comparison(names, values, intervals, tests, examples, confidence, paired)
