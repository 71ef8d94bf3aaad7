"""The robustness suite: every test prompt perturbed in several seeded ways, each model scored on the clean and the
perturbed prompts, and each perturbation's change from clean with a paired interval and test.

The suite (every row's clean and perturbed texts, and the rows where a perturbation failed) is a JSON Lines file
written before any model answers: the same seed writes the same file, and a saved file replays exactly, paraphrases
included, without the paraphrasing model. Rows whose prompt no longer fits a model's context, and rows a
perturbation failed on, are left out of that perturbation's comparison and listed as notes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.errors import DataError
from tunelab.eval.stats import bootstrap_ci, compare, holm, paired_bootstrap
from tunelab.eval.suites.perturb import PARAPHRASE, PerturbationFailed, apply, resolve, row_rng
from tunelab.eval.suites.subjects import Row, Subject

CLEAN = "clean"
FORMAT = "tunelab-robustness-suite/1"
Score = Callable[[str, str], float]
Paraphrase = Callable[[list[str]], list[str | None]]
"""Rewrites of a batch of texts: None where a text is over the paraphrasing model's context."""


@dataclass
class SuiteRow:
    """One row's clean text and its perturbed copies; `failed` holds why a perturbation gave no text."""

    row: int
    origin: str
    clean: str
    perturbed: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class RobustnessSuite:
    """The perturbed prompts of one data file, and how they were made."""

    seed: int
    typo_rate: float
    perturbations: list[str]
    paraphraser: str | None
    rows: list[SuiteRow]

    def save(self, path: str | Path) -> Path:
        """Write the suite as JSON Lines: a header line, then one line per row."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "seed": self.seed,
            "typo_rate": self.typo_rate,
            "perturbations": self.perturbations,
            "paraphraser": self.paraphraser,
        }
        lines = [json.dumps(header), *(json.dumps(asdict(r), ensure_ascii=False) for r in self.rows)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RobustnessSuite:
        """Read a suite `save` wrote; anything else is a DataError naming the file and line."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
            if header.get("format") != FORMAT:
                raise ValueError(f"its first line is not a robustness suite header ({FORMAT})")
            rows = [SuiteRow(**json.loads(line)) for line in lines[1:] if line.strip()]
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{path}: not a robustness suite file written by tunelab ({exc}). Give the "
                "robustness_suite.jsonl an earlier `tunelab eval --suite robustness` wrote."
            ) from None
        return cls(header["seed"], header["typo_rate"], header["perturbations"], header.get("paraphraser"), rows)

    def check_matches(self, rows: list[Row], path: str | Path) -> None:
        """Refuse to replay a suite on data whose prompts are not the ones it was built from."""
        if len(rows) != len(self.rows) or any(r.text != s.clean for r, s in zip(rows, self.rows, strict=True)):
            differ = next((s.origin for r, s in zip(rows, self.rows, strict=False) if r.text != s.clean), "row count")
            raise DataError(
                f"{path} was built from other data than this --data ({len(self.rows)} rows there, "
                f"{len(rows)} here; first difference: {differ}). Replay it on the file it was built "
                "from, or build a new suite without --suite-file."
            )


def build_suite(
    rows: list[Row],
    names: list[str],
    *,
    seed: int = 0,
    typo_rate: float = 0.05,
    paraphrase: Paraphrase | None = None,
    paraphraser: str | None = None,
) -> RobustnessSuite:
    """Perturb every row's text by each named perturbation (`paraphrase` rewrites a batch of texts with a model)."""
    functions = {name: resolve(name, typo_rate) for name in names if name != PARAPHRASE}
    suite_rows = [SuiteRow(i, row.origin, row.text) for i, row in enumerate(rows)]
    for name in names:
        if name == PARAPHRASE:
            if paraphrase is None:
                raise ValueError("the paraphrase perturbation needs a paraphrasing model")
            for suite_row, text in zip(suite_rows, paraphrase([r.text for r in rows]), strict=True):
                _put(suite_row, name, text)
            continue
        for suite_row in suite_rows:
            try:
                suite_row.perturbed[name] = apply(functions[name], suite_row.clean, row_rng(seed, name, suite_row.row))
            except PerturbationFailed as exc:
                suite_row.failed[name] = str(exc)
    return RobustnessSuite(seed, typo_rate, list(names), paraphraser if PARAPHRASE in names else None, suite_rows)


def _put(suite_row: SuiteRow, name: str, text: str | None) -> None:
    if text is None:
        suite_row.failed[name] = "the text is too long for the paraphrasing model's context"
    elif text.strip():
        suite_row.perturbed[name] = text
    else:
        suite_row.failed[name] = "the paraphrasing model wrote nothing usable"


@dataclass
class RobustnessResult:
    """Scores of every model on every perturbation; `to_dict` is what robustness.json holds."""

    metric: str
    suite: RobustnessSuite
    models: list[str]
    perturbations: list[dict[str, Any]]
    clean: dict[str, dict[str, float]]
    notes: list[dict[str, Any]]
    predictions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": "robustness",
            "metric": self.metric,
            "seed": self.suite.seed,
            "typo_rate": self.suite.typo_rate,
            "paraphraser": self.suite.paraphraser,
            "rows": len(self.suite.rows),
            "models": self.models,
            "clean": self.clean,
            "perturbations": self.perturbations,
            "notes": self.notes,
        }


def run_robustness(
    subjects: Sequence[Subject], rows: list[Row], suite: RobustnessSuite, score: Score, metric: str
) -> RobustnessResult:
    """Score every subject on every row's clean and perturbed texts (one batch of prompts per subject)."""
    variants = [CLEAN, *suite.perturbations]
    texts, notes = _scorable(subjects, rows, suite, variants)
    keys = sorted(texts)
    scores: dict[str, dict[tuple[int, str], float]] = {}
    predictions = {
        key: {
            "row": key[0],
            "origin": rows[key[0]].origin,
            "perturbation": key[1],
            "text": texts[key],
            "reference": rows[key[0]].reference,
            "answers": {},
            "scores": {},
        }
        for key in keys
    }
    for subject in subjects:
        answers = subject.answers([rows[i] for i, _ in keys], [texts[k] for k in keys])
        scores[subject.name] = {k: score(a, rows[k[0]].reference) for k, a in zip(keys, answers, strict=True)}
        for key, answer in zip(keys, answers, strict=True):
            predictions[key]["answers"][subject.name] = answer
            predictions[key]["scores"][subject.name] = scores[subject.name][key]
    clean = {
        s.name: bootstrap_ci([v for k, v in scores[s.name].items() if k[1] == CLEAN]).to_dict()
        for s in subjects
        if any(k[1] == CLEAN for k in keys)
    }
    table = [_perturbation_summary(name, suite, scores, [s.name for s in subjects]) for name in suite.perturbations]
    for subject in subjects:  # several perturbations read together: Holm-adjusted p-values beside the raw ones
        entries = [p["models"][subject.name] for p in table if subject.name in p["models"]]
        for entry, adjusted in zip(entries, holm([e["change"]["p_value"] for e in entries]), strict=True):
            # Significance is read from the adjusted p (the one every table shows); the raw verdict is kept.
            change = entry["change"]
            change.update(p_holm=adjusted, significant_unadjusted=change["significant"])
            change["significant"] = bool(change["significant"] and adjusted < change["alpha"])
    return RobustnessResult(metric, suite, [s.name for s in subjects], table, clean, notes, list(predictions.values()))


def _scorable(subjects: Sequence[Subject], rows: list[Row], suite: RobustnessSuite, variants: list[str]):
    """The texts every subject can be asked ({(row, variant): text}) and a note for every one left out."""
    texts: dict[tuple[int, str], str] = {}
    notes: list[dict[str, Any]] = []
    for suite_row in suite.rows:
        for variant in variants:
            text = suite_row.clean if variant == CLEAN else suite_row.perturbed.get(variant)
            if text is None:
                reason = suite_row.failed.get(variant, "no perturbed text in the suite")
                notes.append(
                    {
                        "row": suite_row.row,
                        "origin": suite_row.origin,
                        "perturbation": variant,
                        "note": f"perturbation failed: {reason}",
                    }
                )
                continue
            long = [n for s in subjects if (n := s.too_long(rows[suite_row.row], text))]
            if long:
                notes.append(
                    {"row": suite_row.row, "origin": suite_row.origin, "perturbation": variant, "note": "; ".join(long)}
                )
                continue
            texts[(suite_row.row, variant)] = text
    return texts, notes


def _perturbation_summary(
    name: str, suite: RobustnessSuite, scores: dict[str, dict[tuple[int, str], float]], models: list[str]
) -> dict[str, Any]:
    """One perturbation: rows changed and failed, and per model its score and change from clean on the rows both
    were scored on; with two models, whether the second loses less than the first (a paired bootstrap)."""
    first = scores[models[0]]
    paired = [r.row for r in suite.rows if (r.row, CLEAN) in first and (r.row, name) in first]
    entry: dict[str, Any] = {
        "name": name,
        "changed": sum(r.perturbed.get(name, r.clean) != r.clean for r in suite.rows),
        "failed": sum(name in r.failed for r in suite.rows),
        "scored": len(paired),
        "models": {},
    }
    if not paired:
        return entry
    changes = {}
    for model in models:
        clean = np.array([scores[model][(i, CLEAN)] for i in paired])
        perturbed = np.array([scores[model][(i, name)] for i in paired])
        changes[model] = perturbed - clean
        entry["models"][model] = {
            "clean": bootstrap_ci(clean).to_dict(),
            "score": bootstrap_ci(perturbed).to_dict(),
            "change": compare(clean, perturbed, seed=suite.seed).to_dict(),
        }
    if len(models) == 2:
        entry["change_difference"] = paired_bootstrap(changes[models[0]], changes[models[1]], seed=suite.seed).to_dict()
    return entry
