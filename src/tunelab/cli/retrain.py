"""`tunelab retrain RUN --log DB`: one round of the production loop; prints the counts, the gate's decision and,
when promoted, how a running server picks up the new champion. Exit 0 when promoted, 1 when the gate refused."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tunelab.core.errors import ConfigError
from tunelab.recipes.retrain.gate import GateRule
from tunelab.recipes.retrain.run import RetrainOptions
from tunelab.recipes.retrain.run import retrain as run_retrain

console = Console()


def retrain(args: argparse.Namespace) -> None:
    limits = [("--gate-fraction", args.gate_fraction, 0.0, 0.9), ("--replay", args.replay, 0.0, 0.95),
              ("--alpha", args.alpha, 1e-6, 0.5)]  # fmt: skip
    for flag, value, low, high in limits:
        if not low <= value <= high:
            raise ConfigError(f"{flag} must be between {low:g} and {high:g}; got {value:g}.")
    if args.min_feedback < 1 or args.old_margin < 0:
        raise ConfigError("--min-feedback must be at least 1 and --old-margin at least 0.")
    options = RetrainOptions(
        db=args.log, out=Path(args.out) if args.out else None, gate_file=Path(args.gate) if args.gate else None,
        min_feedback=args.min_feedback, gate_fraction=args.gate_fraction, replay_fraction=args.replay,
        pairs=args.pairs, max_old=args.max_old, rule=GateRule(args.alpha, args.min_gain, args.old_margin),
        overrides=list(args.set or []), champion=Path(args.champion) if args.champion else None,
        promote=not args.no_promote, seed=args.seed,
    )  # fmt: skip
    result = run_retrain(Path(args.run), options, console)
    gate = result.gate
    for name, part in gate.parts.items():
        console.print(f"{name} cases ({part.n}): champion {part.champion:.3f} -> challenger {part.challenger:.3f}; "
                      f"{part.rule}", highlight=False)  # fmt: skip
    style = "bold green" if gate.promoted else "bold red"
    console.print(gate.reason, style=style, highlight=False)
    console.print(
        f"gate report: {result.folder / 'gate.md'}; lineage: {result.folder / 'lineage.json'}", highlight=False
    )
    if result.champion_file is not None:
        console.print(
            f"champion pointer: {result.champion_file}\nA server started with --champion {result.champion_file} "
            "swaps it in now: curl -X POST http://HOST:PORT/v1/admin/reload -H 'Authorization: Bearer KEY'\n"
            f"otherwise restart it: tunelab serve {result.challenger} ...", highlight=False,
        )  # fmt: skip
    if not gate.promoted:
        raise SystemExit(1)
