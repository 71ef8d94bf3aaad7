"""Generation evaluation on held-out examples: answers scored against their references (overlap metrics, and
structure, label and embedding-similarity metrics where they apply), and the predictions file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.fewshot.context import context_window
from tunelab.eval.labels import LabelReport, is_label_task, label_report
from tunelab.eval.metrics import aggregate, bleu, chrf, exact_match, rouge_scores, token_f1
from tunelab.eval.similarity import embedding_similarity
from tunelab.eval.structured import is_structured_task, structured_scores
from tunelab.models.condense import Condenser, LongPrompts, condense
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
    schema: Draft202012Validator | None = None,
    similarity_encoder: str | None = None,
    long_prompts: LongPrompts = "error",
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Answer the first `max_examples` examples greedily and score the answers against their last assistant turn.

    Returns the metrics (`answer_scores`) and one prediction dict per example: origin, prompt (the last user
    message), reference, prediction and the per-example scores. No examples gives ({}, []). A prompt longer than
    the model's context less `max_new_tokens` is an error, or with `long_prompts="hierarchical"` is answered from
    the model's notes on its parts (`fit_prompts`; such rows say `condensed_parts`).
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
    asked, parts = fit_prompts(model, tokenizer, prompts, [ex.origin for ex in chosen], max_new_tokens,
                               long_prompts, batch_size=batch_size, system_prompt=system_prompt,
                               precision=precision)  # fmt: skip
    predictions = generate_answers(
        model,
        tokenizer,
        asked,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        show_progress=show_progress,
        precision=precision,
    )
    rows: list[dict[str, Any]] = [
        {
            "origin": ex.origin,
            "prompt": next((m.content for m in reversed(prompt) if m.role == "user"), ""),
            "reference": ref,
            "prediction": pred,
        }
        for ex, prompt, ref, pred in zip(chosen, prompts, references, predictions, strict=True)
    ]
    for k, count in parts.items():
        rows[k]["condensed_parts"] = count
    metrics = answer_scores(rows, schema=schema, similarity_encoder=similarity_encoder)
    if parts:
        metrics["prompts_condensed"] = float(len(parts))
    return metrics, rows


def fit_prompts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[Message]],
    origins: list[str],
    max_new_tokens: int,
    long_prompts: LongPrompts,
    *,
    batch_size: int,
    system_prompt: str | None,
    precision: Precision,
) -> tuple[list[list[Message]], dict[int, int]]:
    """The prompts within the model's context less `max_new_tokens`, and for each one condensed (`long_prompts`
    `hierarchical`) the parts its longest message was cut into. Raises DataError for an over-long prompt under
    `error`, naming the row and both ways out."""
    window = context_window(model)
    if window is None:
        return prompts, {}
    condenser = Condenser(tokenizer, window - max_new_tokens, system_prompt=system_prompt)
    over = [k for k, prompt in enumerate(prompts) if condenser.count(prompt) > condenser.budget]
    if not over:
        return prompts, {}
    if long_prompts == "error":
        first = over[0]
        raise DataError(
            f"{len(over)} prompt(s) are longer than the model's context of {window} tokens less the {max_new_tokens} "
            f"to generate; the first is {origins[first]} ({condenser.count(prompts[first])} tokens). Shorten them, "
            "or have them answered from the model's notes on their parts: `--long-prompts hierarchical` "
            "(eval.long_prompts: hierarchical in a config)."
        )

    def notes(asks: list[list[Message]]) -> list[str]:
        return generate_answers(model, tokenizer, asks, max_new_tokens=condenser.note_tokens, batch_size=batch_size,
                                system_prompt=system_prompt, show_progress=False, precision=precision)  # fmt: skip

    fitted, parts = list(prompts), {}
    for k in over:
        done = condense(condenser, prompts[k], notes)
        fitted[k], parts[k] = done.messages, done.parts
    return fitted, parts


def _words(references: list[str]) -> float:
    return sum(len(r.split()) for r in references) / len(references)


def answer_scores(
    rows: list[dict[str, Any]], *, schema: Draft202012Validator | None = None, similarity_encoder: str | None = None
) -> dict[str, float]:
    """Score prediction rows (`prediction`, `reference`) in place and return the metrics.

    Each row gains exact_match, token_f1, rouge_1, rouge_l and, when references average two words or more,
    rouge_2; when every reference is a JSON object or array, json_valid, json_match (and json_schema with a
    `schema`); with a `similarity_encoder`, the embedding similarity to the reference. The metrics are the means of
    those, with corpus chrF, corpus BLEU (when references average four words or more) and, when the references are
    labels (`labels.is_label_task`), macro precision, recall and F1.
    """
    preds, refs = [str(r["prediction"]) for r in rows], [str(r["reference"]) for r in rows]
    # Bigram and 4-gram overlap need that many words: on short answers (labels, dates, codes) ROUGE-2 and BLEU-4
    # are 0 whatever the quality, so they would only mislead. They are reported when the answers are long enough.
    words = _words(refs)
    structured = is_structured_task(refs)
    similarity = embedding_similarity(preds, refs, similarity_encoder) if similarity_encoder else None
    for k, (row, pred, ref) in enumerate(zip(rows, preds, refs, strict=True)):
        rouge = rouge_scores(pred, ref)
        if words < 2:
            del rouge["rouge_2"]
        row.update(exact_match=exact_match(pred, ref), token_f1=token_f1(pred, ref), **rouge)
        if structured:
            row.update(structured_scores(pred, ref, schema))
        if similarity is not None:
            row["similarity"] = similarity[k]
    metrics = aggregate(rows)
    metrics["chrf"] = chrf(preds, refs)
    if words >= 4:
        metrics["bleu"] = bleu(preds, refs)
    report = generated_labels(rows)
    if report is not None:
        metrics.update(report.metrics)
    return metrics


def generated_labels(rows: list[dict[str, Any]]) -> LabelReport | None:
    """The label report (confusion matrix, per-class scores) of generated answers whose references are labels;
    None for other tasks."""
    if not all("reference" in r and "prediction" in r for r in rows):  # a classifier's rows: eval.classify
        return None
    refs = [str(r["reference"]).strip() for r in rows]
    if not is_label_task(refs):
        return None
    return label_report(refs, [str(r["prediction"]).strip() for r in rows])


def write_predictions(predictions: list[dict[str, Any]], path: str | Path) -> Path:
    """Write prediction dicts as JSON lines (UTF-8, one object per line), creating the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in predictions:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The prediction dicts of a file `write_predictions` wrote; no file gives []."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
