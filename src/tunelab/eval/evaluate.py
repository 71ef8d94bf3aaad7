"""Generation evaluation on held-out examples, the predictions file, and the before/after metrics table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.metrics import aggregate, bleu, exact_match, rouge_l, token_f1
from tunelab.models.generate import Precision, generate_answers


def generation_metrics(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    max_examples: int | None,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
    precision: Precision = "fp32",
    show_progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Answer the first `max_examples` examples greedily and score the answers against their last assistant turn.

    Returns the means of exact_match, token_f1 and rouge_l with the corpus bleu, and one prediction dict per
    example: origin, prompt (the last user message), reference, prediction and the per-example scores. No
    examples gives ({}, []).
    """
    chosen = examples if max_examples is None else examples[:max_examples]
    prompts: list[list[Message]] = []
    references: list[str] = []
    for ex in chosen:
        if not any(m.role == "assistant" for m in ex.messages):
            raise DataError(
                f"{ex.origin}: the example has no assistant message, so there is no reference answer to score. "
                "Give every validation row an assistant turn (or turn eval.generate off)."
            )
        prompt, reference = ex.prompt_and_answer()
        prompts.append(prompt)
        references.append(reference)
    if not chosen:
        return {}, []
    predictions = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        show_progress=show_progress,
        precision=precision,
    )
    rows = [
        {
            "origin": ex.origin,
            "prompt": next((m.content for m in reversed(prompt) if m.role == "user"), ""),
            "reference": ref,
            "prediction": pred,
            "exact_match": exact_match(pred, ref),
            "token_f1": token_f1(pred, ref),
            "rouge_l": rouge_l(pred, ref),
        }
        for ex, prompt, ref, pred in zip(chosen, prompts, references, predictions, strict=True)
    ]
    metrics = aggregate(rows)
    # BLEU-4 needs 4-grams: on short answers (labels, dates, codes) it is 0 whatever the quality, so it would
    # only mislead. It is reported when references average at least four words.
    if sum(len(r.split()) for r in references) >= 4 * len(references):
        metrics["bleu"] = bleu(predictions, references)
    return metrics, rows


def write_predictions(predictions: list[dict[str, Any]], path: str | Path) -> Path:
    """Write prediction dicts as JSON lines (UTF-8, one object per line), creating the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in predictions:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# Metrics in [0, 1] shown as percentages; everything else (losses, perplexity, counts) as plain numbers.
RATE_METRICS = frozenset({"exact_match", "token_f1", "rouge_l", "bleu", "accuracy", "f1", "precision", "recall"})
RATE_SUFFIXES = ("_acc", "_accuracy", "_f1", "_exact_match")
LOWER_IS_BETTER = ("loss", "ppl", "perplexity")


def is_rate(name: str) -> bool:
    """Whether a metric is a rate in [0, 1] (shown as a percentage, compared in percentage points)."""
    return name in RATE_METRICS or name.endswith(RATE_SUFFIXES)


def metrics_table(columns: dict[str, dict[str, float]], title: str | None = None) -> Table:
    """A table with one row per metric and one column per model, plus a "Δ" column (last minus first) for two.

    Rates are shown as percentages and their Δ in percentage points; other numbers with 4 significant digits.
    A Δ is green when it is an improvement (higher rates, lower losses/perplexity) and red when it is worse.
    A metric a model lacks shows as "—".
    """
    names = list(columns)
    metrics: list[str] = []
    for values in columns.values():
        metrics.extend(k for k in values if k not in metrics)
    table = Table(title=title)
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    with_delta = len(names) == 2
    if with_delta:
        table.add_column("Δ", justify="right")
    for metric in metrics:
        cells = [_format_value(metric, columns[name].get(metric)) for name in names]
        if with_delta:
            cells.append(_format_delta(metric, columns[names[0]].get(metric), columns[names[1]].get(metric)))
        table.add_row(metric, *cells)
    return table


def _format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if is_rate(metric):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def _format_delta(metric: str, before: float | None, after: float | None) -> str:
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return ""
    delta = after - before
    text = f"{100 * delta:+.1f} pp" if is_rate(metric) else f"{delta:+.3g}"
    better = delta > 0 if is_rate(metric) else delta < 0 if any(w in metric for w in LOWER_IS_BETTER) else None
    if better is None or delta == 0:
        return text
    return f"[green]{text}[/]" if better else f"[red]{text}[/]"
