"""`tunelab eval MODEL --data FILE --suite robustness --suite bias`: the suites of `tunelab.eval.suites`, their
tables, the report with their sections, and where their files went."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tunelab.core.errors import ConfigError
from tunelab.eval.report import suite_report
from tunelab.eval.suites.run import SuiteOptions, check_suites, run_suites
from tunelab.eval.suites.tables import print_bias, print_robustness
from tunelab.methods.trained import is_run

console = Console()


def evaluate_suites(args: argparse.Namespace) -> None:
    check_suites(args.suite)
    if len(args.model) != 1:
        raise ConfigError("--suite scores one run folder (base and tuned side by side) or one model; give one.")
    spec = args.model[0]
    out = Path(args.suite_out) if args.suite_out else _default_out(spec, args.out)
    opts = SuiteOptions(
        data=args.data,
        out=out,
        seed=args.seed,
        perturbations=args.perturb,
        typo_rate=args.typo_rate,
        suite_file=args.suite_file,
        paraphraser=args.paraphraser,
        metric=args.suite_metric,
        attributes=args.attribute,
        term_files=args.terms or [],
        max_fills=args.max_fills,
        worst=args.worst,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        system_prompt=args.system,
        bf16=args.bf16,
    )
    results = run_suites(spec, args.suite, opts, console)
    if "robustness" in results:
        print_robustness(console, results["robustness"].to_dict())
    if "bias" in results:
        print_bias(console, results["bias"].to_dict())
    console.print(f"suite results: {out}/ ({', '.join(f'{n}.json' for n in results)})")
    html_path, _ = suite_report(out, Path(spec) if is_run(spec) else None)
    console.print(f"report: {html_path} (and report.md)")


def _default_out(spec: str, predictions: str | None) -> Path:
    if predictions:
        return Path(predictions).parent
    return Path(spec) / "eval" if is_run(spec) else Path("eval")
