"""`tunelab monitor RUN --log DB`: drift and quality of live traffic against the run's training data; a report in
RUN/monitor/ (or --out), one line per alert, and exit code 1 when any threshold is crossed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from tunelab.core.duration import seconds
from tunelab.core.errors import ConfigError
from tunelab.recipes.monitor.monitor import monitor as run_monitor
from tunelab.recipes.monitor.monitor import monitor_settings
from tunelab.recipes.monitor.report import write_report

console = Console()


def monitor(args: argparse.Namespace) -> None:
    overrides = list(args.set or [])
    if args.window:
        overrides.append(f"window={args.window}")
    settings = monitor_settings(Path(args.thresholds) if args.thresholds else None, overrides)
    since = None
    if args.since:
        try:
            since = time.time() - float(seconds(args.since))
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}.") from None
    run_dir = Path(args.run)
    with console.status("reading the log, the training data, and encoding inputs"):
        result = run_monitor(run_dir, args.log, settings, since=since)
    paths = write_report(result, Path(args.out) if args.out else run_dir / "monitor")
    tested = sum(w.tested for w in result.windows)
    console.print(f"{len(result.windows)} windows ({tested} tested), report: {paths['markdown']}", highlight=False)
    for line in result.alerts:
        console.print(line, style="bold red", highlight=False, soft_wrap=True)
    if result.alerts:
        raise SystemExit(1)
    console.print("no alerts", highlight=False)
