"""`tunelab diagnose RUN`: the fitting diagnosis of a run folder (underfitting / good fit / overfitting / unstable),
with its evidence and advice; writes diagnosis.json and learning_curves.png into the folder, as training does."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text

from tunelab.core.errors import RunError
from tunelab.eval.diagnose import CURVES_FILE, DIAGNOSIS_FILE, Diagnosis, diagnose_run

console = Console()
COLOURS = {"good fit": "green", "underfitting": "yellow", "overfitting": "red", "unstable": "red", "unknown": "dim"}


def diagnose(args: argparse.Namespace) -> None:
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunError(f"'{run_dir}' is not a folder. Give the run folder `tunelab train` wrote.")
    show(diagnose_run(run_dir))
    console.print(f"written: {run_dir / DIAGNOSIS_FILE}, {run_dir / CURVES_FILE}")


def show(result: Diagnosis) -> None:
    """The verdict in its colour, then the evidence and the advice as bullet lists."""
    console.print(Text.assemble("fitting: ", (result.verdict, f"bold {COLOURS[result.verdict]}")))
    for title, lines in (("evidence", result.evidence), ("advice", result.advice)):
        console.print(f"[bold]{title}[/]")
        for line in lines:
            console.print(Text(f"  • {line}"))
