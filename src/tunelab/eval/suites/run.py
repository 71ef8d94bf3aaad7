"""`tunelab eval MODEL --data FILE --suite robustness --suite bias`: load the models once, run each suite, write
its JSON (robustness.json, bias.json), the saved suite and the per-example answers into the output folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tunelab.core.errors import ConfigError, TunelabError
from tunelab.data.load import load_examples
from tunelab.eval.metrics import exact_match, rouge_l, token_f1
from tunelab.eval.suites.bias import (
    BiasResult,
    build_pairs,
    fitting_pairs,
    score_classifier,
    score_generator,
    summarise,
)
from tunelab.eval.suites.load import can_generate, load_subjects
from tunelab.eval.suites.paraphrase import paraphrase_all
from tunelab.eval.suites.perturb import DEFAULT_PERTURBATIONS, PARAPHRASE
from tunelab.eval.suites.robustness import RobustnessResult, RobustnessSuite, build_suite, run_robustness
from tunelab.eval.suites.subjects import Classifier, Generator, Row, classification_rows, generation_rows
from tunelab.eval.suites.terms import term_lists
from tunelab.methods.trained import is_run, load_trained, read_run

SUITES = ("robustness", "bias")
METRICS = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l}
SUITE_FILE = "robustness_suite.jsonl"


@dataclass
class SuiteOptions:
    """What the suites run on and how (the CLI's flags)."""

    data: str
    out: Path
    seed: int = 0
    perturbations: list[str] | None = None
    """Perturbation names or package.module:function paths; None: every built-in one and paraphrase."""
    typo_rate: float = 0.05
    suite_file: str | None = None
    """A saved robustness suite to replay instead of perturbing again."""
    paraphraser: str = "base"
    """`base` (the run's base model, or the model itself), `none`, or any model source."""
    metric: str = "exact_match"
    attributes: list[str] | None = None
    term_files: list[str] = field(default_factory=list)
    max_fills: int = 4
    worst: int = 5
    max_examples: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 64
    system_prompt: str | None = None
    bf16: bool = False


def check_suites(names: list[str]) -> None:
    """Refuse a suite name tunelab does not have, listing the ones it has."""
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ConfigError(f"Unknown suite(s): {', '.join(unknown)}. The suites are: {', '.join(SUITES)}.")


def run_suites(spec: str, names: list[str], opts: SuiteOptions, console: Console) -> dict[str, Any]:
    """Run the named suites on `spec` (a run folder: base and tuned side by side; or one model)."""
    check_suites(names)
    if opts.metric not in METRICS:
        raise ConfigError(f"--suite-metric must be one of {', '.join(METRICS)}, got '{opts.metric}'.")
    subjects = load_subjects(
        spec,
        batch_size=opts.batch_size,
        max_new_tokens=opts.max_new_tokens,
        system_prompt=opts.system_prompt,
        precision="bf16" if opts.bf16 else "fp32",
    )
    examples = load_examples([opts.data]).examples[: opts.max_examples]
    if not examples:
        raise TunelabError(f"'{opts.data}' holds no usable rows for the suites.")
    classify = isinstance(subjects[0], Classifier)
    rows = classification_rows(examples) if classify else generation_rows(examples)
    opts.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        if name == "robustness":
            results[name] = _robustness(spec, subjects, rows, opts, console)
        else:
            results[name] = _bias(subjects, rows, opts)
        _write_json(opts.out / f"{name}.json", results[name].to_dict())
    return results


def _robustness(
    spec: str, subjects: list[Generator | Classifier], rows: list[Row], opts: SuiteOptions, console: Console
) -> RobustnessResult:
    if opts.suite_file:
        suite = RobustnessSuite.load(opts.suite_file)
        suite.check_matches(rows, opts.suite_file)
    else:
        names = list(opts.perturbations or DEFAULT_PERTURBATIONS)
        paraphrase, paraphraser = None, None
        if PARAPHRASE in names:
            paraphrase, paraphraser, why = _paraphraser(spec, subjects, opts)
            if paraphrase is None:
                names.remove(PARAPHRASE)
                console.print(f"paraphrase left out: {why}")
        suite = build_suite(
            rows, names, seed=opts.seed, typo_rate=opts.typo_rate, paraphrase=paraphrase, paraphraser=paraphraser
        )
    suite.save(opts.out / SUITE_FILE)
    score = (lambda a, b: float(a == b)) if isinstance(subjects[0], Classifier) else METRICS[opts.metric]
    metric = "accuracy" if isinstance(subjects[0], Classifier) else opts.metric
    result = run_robustness(subjects, rows, suite, score, metric)
    _write_lines(opts.out / "robustness_predictions.jsonl", result.predictions)
    return result


def _paraphraser(spec: str, subjects: list[Generator | Classifier], opts: SuiteOptions):
    """(rewrite function, what model it is, or None and why not)."""
    if opts.paraphraser == "none":
        return None, None, "--paraphraser none"
    if opts.paraphraser != "base":
        model, tokenizer = load_trained(opts.paraphraser, dtype=torch.float32)
        name = opts.paraphraser
    elif isinstance(subjects[0], Generator):
        model, tokenizer = subjects[0].model, subjects[0].tokenizer
        name = f"{read_run(spec).source} (the run's base model)" if is_run(spec) else spec
    else:
        return None, None, "the run's base model is a classifier body that cannot write; give --paraphraser MODEL"
    if not can_generate(model):
        return None, None, f"'{name}' is not a language model that can write text; give --paraphraser MODEL"
    return (lambda texts: paraphrase_all(model, tokenizer, texts, batch_size=opts.batch_size)), f"{name}, greedy", ""


def _bias(subjects: list[Generator | Classifier], rows: list[Row], opts: SuiteOptions) -> BiasResult:
    lists = term_lists(opts.attributes, opts.term_files)
    pairs, notes = fitting_pairs(subjects, rows, build_pairs(rows, lists, seed=opts.seed, max_fills=opts.max_fills))
    scores = {}
    for s in subjects:
        scores[s.name] = (
            score_classifier(s, rows, pairs) if isinstance(s, Classifier) else score_generator(s, rows, pairs, lists)
        )
    kind = "classifier" if isinstance(subjects[0], Classifier) else "generator"
    result = summarise(kind, lists, pairs, scores, notes=notes, worst=opts.worst, seed=opts.seed)
    _write_lines(opts.out / "bias_pairs.jsonl", result.pairs)
    return result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
