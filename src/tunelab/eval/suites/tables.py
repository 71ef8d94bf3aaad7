"""The suites' results as terminal tables: each score with its interval, each change with its paired test, and
changes that are not significant marked "n.s." and dimmed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunelab.eval.stats import shown_verdict
from tunelab.eval.suites.bias import LIMITS


def _pct(interval: dict[str, float]) -> str:
    return f"{100 * interval['estimate']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def _num(interval: dict[str, float]) -> str:
    return f"{interval['estimate']:+.3g} [{interval['low']:+.3g}, {interval['high']:+.3g}]"


def _test(test: dict[str, Any], rate: bool = True) -> Text:
    """A paired test's difference (pp for rates), its p-value, and "n.s." (dimmed) when it is not significant."""
    delta = test["delta"]["estimate"]
    text = f"{100 * delta:+.1f} pp" if rate else f"{delta:+.3g}"
    p, significant = shown_verdict(test)
    if not significant:
        return Text(f"{text} p={p:.2g} n.s.", style="dim")
    return Text(f"{text} p={p:.2g}", style="green" if delta > 0 else "red")


def robustness_table(result: dict[str, Any]) -> Table:
    """One row per perturbation: rows changed, and per model its score and its change from clean."""
    models = result["models"]
    table = Table(title=f"Robustness: {result['metric']} (%) on {result['rows']} rows, 95% intervals, p Holm-adjusted")
    for name in ("perturbation", "changed", "scored"):
        table.add_column(name, justify="left" if name == "perturbation" else "right")
    for model in models:
        table.add_column(model, justify="right")
        table.add_column(f"{model} Δ vs clean", justify="right")
    if len(models) == 2:
        table.add_column(f"{models[1]} Δ − {models[0]} Δ", justify="right")
    clean: list[str | Text] = []
    for model in models:
        clean += [_pct(result["clean"][model]) if model in result["clean"] else "—", ""]
    table.add_row("clean", "", "", *clean, *([""] if len(models) == 2 else []))
    for entry in result["perturbations"]:
        cells: list[str | Text] = [entry["name"], f"{entry['changed']}", f"{entry['scored']}"]
        for model in models:
            scored = entry["models"].get(model)
            cells += [_pct(scored["score"]), _test(scored["change"])] if scored else ["—", "—"]
        if len(models) == 2:
            cells.append(_test(entry["change_difference"]) if "change_difference" in entry else "—")
        table.add_row(*cells)
    return table


def bias_table(result: dict[str, Any]) -> Table:
    """One row per attribute: pairs, and per model the rate of changed answers and the mean |gap|."""
    models, unit = result["models"], result["gap_unit"]
    changed = "label flips" if result["kind"] == "classifier" else "different answers"
    table = Table(title=f"Bias probe: counterfactual pairs (rates in %, gaps in {unit}, 95% intervals)")
    table.add_column("attribute")
    table.add_column("pairs", justify="right")
    for model in models:
        table.add_column(f"{model} {changed}", justify="right")
        table.add_column(f"{model} mean |gap|", justify="right")
    if len(models) == 2:
        table.add_column(f"{models[1]} − {models[0]} |gap|", justify="right")
    for entry in result["attributes"]:
        cells: list[str | Text] = [entry["attribute"], str(entry["pairs"])]
        for model in models:
            summary = entry["models"].get(model)
            cells += [_pct(summary["changed_rate"]), _num(summary["mean_abs_gap"])] if summary else ["—", "—"]
        if len(models) == 2:
            cells.append(_test(entry["comparison"]["mean_abs_gap"], rate=False) if "comparison" in entry else "—")
        table.add_row(*cells)
    return table


def print_bias(console: Console, result: dict[str, Any], worst: int = 3) -> None:
    """The bias table, the worst pairs of the last model, the notes count, and what the probe can and cannot show."""
    console.print(bias_table(result))
    model = result["models"][-1]
    for entry in result["attributes"]:
        summary = entry["models"].get(model)
        if not summary:
            continue
        console.print(f"[bold]{entry['attribute']}[/]: worst pairs for {model}")
        for pair in summary["worst"][:worst]:
            console.print(
                Text(
                    f"  {pair['gap']:+.3g}  {pair['from']} → {pair['to']}: {pair['text']!r} → "
                    f"{pair['counterfactual']!r}  ({pair['answer']!r} / {pair['counterfactual_answer']!r})"
                )
            )
    empty = [e["attribute"] for e in result["attributes"] if not e["pairs"]]
    if empty:
        console.print(
            f"no prompt mentions a term of: {', '.join(empty)} (write templates with a slot such as "
            "{gender} in the data to probe them)"
        )
    if result["notes"]:
        console.print(f"{len(result['notes'])} pair(s) left out (see bias.json notes)")
    console.print(Text(LIMITS, style="italic"))


def print_robustness(console: Console, result: dict[str, Any]) -> None:
    """The robustness table and how many rows were left out and why."""
    console.print(robustness_table(result))
    if result["paraphraser"]:
        console.print(f"paraphrases by {result['paraphraser']}")
    if result["notes"]:
        failed = sum(n["note"].startswith("perturbation failed") for n in result["notes"])
        console.print(
            f"{len(result['notes'])} row note(s): {failed} perturbation failure(s), "
            f"{len(result['notes']) - failed} over a model's context (see robustness.json notes)"
        )
