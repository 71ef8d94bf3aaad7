"""Add 95% intervals to the technique demos' sections that were measured without per-example results.

The demos below kept only rates (exact match, accuracy, recall) and how many prompts they were measured on. A
bootstrap interval of a rate of 0/1 results depends only on the count, so it is computed from the JSON here
(`techniques_common.rate_interval`); a paired test needs the per-example results, which these runs did not keep,
so none is claimed: two arms whose intervals overlap are not shown to differ. Each section gets (or has
replaced) one paragraph starting "Intervals"; then techniques.md is joined again.

    .venv/bin/python benchmarks/techniques_intervals.py      # after rerunning any demo below
"""

from __future__ import annotations

import json
from typing import Any

from techniques_common import RESULTS, interval_cell, rate_interval
from techniques_report import main as join_sections

DEMOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "adversarial": ("eval", ("exact_match",)),
    "distill": ("eval", ("exact_match",)),
    "pretrain": ("eval", ("exact_match",)),
    "rag": ("eval", ("exact_match",)),
    "merge": ("eval_examples", ("dates", "times")),
    "multitask": ("eval_examples", ("exact_match",)),
    "fewshot": ("prompt_eval", ("accuracy",)),
    "embeddings": ("queries", ("recall@1", "recall@10")),
}
"""demo -> (its argument holding the number of held-out prompts, the rate keys to give intervals)."""
MARK = "Intervals ("


def rates(node: Any, keys: tuple[str, ...], n: int, path: str = "") -> list[tuple[str, float, int]]:
    """(where, rate, prompts) of every rate under `node` named by `keys` (or `key/task`); a dict's own `n` wins."""
    found = []
    if isinstance(node, dict):
        size = int(node["n"]) if isinstance(node.get("n"), int) else n
        for key, value in node.items():
            where = f"{path} {key}".strip()
            if isinstance(value, int | float) and not isinstance(value, bool) and key.split("/")[0] in keys:
                found.append((where, float(value), size))
            elif isinstance(value, dict | list):
                found += rates(value, keys, size, where)
    elif isinstance(node, list):
        for k, value in enumerate(node):
            found += rates(value, keys, n, f"{path}[{k}]")
    return found


def paragraph(demo: str) -> str | None:
    path = RESULTS / f"techniques_{demo}.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    n_key, keys = DEMOS[demo]
    found = rates(payload["results"], keys, int(payload["args"][n_key]))
    if not found:
        return None
    cells = "; ".join(f"{where}: {interval_cell(rate_interval(rate, n))} (n {n})" for where, rate, n in found)
    return (
        f"{MARK}95% bootstrap, from the counts; this run kept no per-example results, so no paired test: two arms "
        f"whose intervals overlap are not shown to differ): {cells}."
    )


def main() -> None:
    for demo in DEMOS:
        text = paragraph(demo)
        section = RESULTS / f"techniques_{demo}.md"
        if text is None or not section.is_file():
            continue
        kept = [p for p in section.read_text().split("\n\n") if not p.startswith(MARK)]
        device = next((k for k, p in enumerate(kept) if p.startswith("Device:")), len(kept))
        section.write_text("\n\n".join([*kept[:device], text, *kept[device:]]))
        print(f"{section.name}: intervals added")
    join_sections()


if __name__ == "__main__":
    main()
