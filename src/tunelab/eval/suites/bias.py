"""The bias probe: counterfactual pairs of prompts that differ only in the terms of one attribute (he/she, a name of
one origin or another, a religion, an age, a nationality), and the difference that change makes to each model.

Pairs come from the data's own prompts: a prompt that mentions a listed term is paired with the same prompt with
every such term swapped into each other group; a prompt holding a slot such as `{gender}` is a template, filled with
a few seeded lines of the list, one text per group. A classifier's difference is a label flip and the change of the
probability of the class it predicted on the original; a generator's is the change of the log-probability of the
same answer (the reference, or its own answer to the original, with the answer's terms swapped the same way) and
whether its greedy answer differs beyond that swap.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rich.progress import track

from tunelab.eval.metrics import normalize_answer
from tunelab.eval.stats import bootstrap_ci, compare
from tunelab.eval.suites.subjects import Classifier, Generator, Row, Subject
from tunelab.eval.suites.terms import TermList

LIMITS = (
    "What this probe can show: that, on these prompts, swapping the listed terms changes the model's answers or "
    "their probability, by how much, in which direction and on which pairs. What it cannot show: that the model is "
    "fair or unbiased. A small gap holds only for these term lists, these prompts and this task; names and words "
    "stand in for groups imperfectly (a name suggests an origin, it does not give one); a swap can make a sentence "
    "ungrammatical or change its meaning (her -> his/him); and a gap may be justified when the attribute matters "
    "to the answer. Read the worst pairs before drawing conclusions."
)


@dataclass(frozen=True)
class Pair:
    """A prompt and its counterfactual: the same text with the attribute's terms swapped into `to_group`."""

    row: int
    origin: str
    attribute: str
    from_group: str
    to_group: str
    to_index: int
    text: str
    counterfactual: str
    reference: str
    counterfactual_reference: str


def build_pairs(rows: list[Row], lists: list[TermList], *, seed: int = 0, max_fills: int = 4) -> list[Pair]:
    """Every counterfactual pair of every row and attribute (see the module's docstring)."""
    pairs: list[Pair] = []
    for i, row in enumerate(rows):
        for terms in lists:
            text, reference = _fill_other_slots(row.text, lists, terms), _fill_other_slots(row.reference, lists, terms)
            if terms.slot() in text:
                pairs += _template_pairs(
                    i, row.origin, text, reference, terms, random.Random(f"{seed}:{terms.attribute}:{i}"), max_fills
                )
            else:
                pairs += _swapped_pairs(i, row.origin, text, reference, terms)
    return pairs


def _fill_other_slots(text: str, lists: list[TermList], probed: TermList) -> str:
    """Other attributes' slots hold their first term, so a template probing one attribute reads as plain text."""
    for other in lists:
        if other is not probed:
            text = text.replace(other.slot(), other.lines[0][0])
    return text


def _template_pairs(
    row: int, origin: str, text: str, reference: str, terms: TermList, rng: random.Random, max_fills: int
) -> list[Pair]:
    lines = sorted(rng.sample(range(len(terms.lines)), min(max_fills, len(terms.lines))))
    out = []
    for line in lines:
        first = terms.lines[line][0]
        for g in range(1, len(terms.groups)):
            other = terms.lines[line][g]
            out.append(
                Pair(
                    row,
                    origin,
                    terms.attribute,
                    terms.groups[0],
                    terms.groups[g],
                    g,
                    text.replace(terms.slot(), first),
                    text.replace(terms.slot(), other),
                    reference.replace(terms.slot(), first),
                    reference.replace(terms.slot(), other),
                )
            )
    return out


def _swapped_pairs(row: int, origin: str, text: str, reference: str, terms: TermList) -> list[Pair]:
    found = terms.find(text)
    if not found:
        return []
    # The group most of the text's terms belong to (the first listed on a tie) is the one it is swapped from.
    own = min(Counter(m.group for m in found).most_common(), key=lambda kv: (-kv[1], kv[0]))[0]
    out = []
    for g in range(len(terms.groups)):
        counterfactual = terms.swap(text, g)
        if g != own and counterfactual != text:
            out.append(
                Pair(
                    row,
                    origin,
                    terms.attribute,
                    terms.groups[own],
                    terms.groups[g],
                    g,
                    text,
                    counterfactual,
                    reference,
                    terms.swap(reference, g),
                )
            )
    return out


def fitting_pairs(subjects: Sequence[Subject], rows: list[Row], pairs: list[Pair]) -> tuple[list[Pair], list[dict]]:
    """The pairs whose two texts fit every model's context, and a note for each one left out."""
    kept, notes = [], []
    for pair in pairs:
        long = [n for s in subjects for t in (pair.text, pair.counterfactual) if (n := s.too_long(rows[pair.row], t))]
        if long:
            notes.append({"row": pair.row, "origin": pair.origin, "attribute": pair.attribute, "note": long[0]})
        else:
            kept.append(pair)
    return kept, notes


@dataclass
class PairScore:
    """One model on one pair: whether its answer changed, and the gap (counterfactual minus original)."""

    changed: bool
    gap: float
    answer: str
    counterfactual_answer: str


def score_classifier(model: Classifier, rows: list[Row], pairs: list[Pair]) -> list[PairScore]:
    """Label flip, and the change of the probability of the class predicted on the original text."""
    at = [rows[p.row] for p in pairs]
    original = model.probabilities(at, [p.text for p in pairs])
    swapped = model.probabilities(at, [p.counterfactual for p in pairs])
    out = []
    for k in range(len(pairs)):
        c, d = int(original[k].argmax()), int(swapped[k].argmax())
        gap = float(swapped[k, c] - original[k, c])
        out.append(PairScore(c != d, gap, model.labels[c], model.labels[d]))
    return out


def score_generator(model: Generator, rows: list[Row], pairs: list[Pair], lists: list[TermList]) -> list[PairScore]:
    """Whether the greedy answer differs beyond the swap, and the log-probability gap of the same answer."""
    by_name = {t.attribute: t for t in lists}
    at = [rows[p.row] for p in pairs]
    answers = model.answers(at + at, [p.text for p in pairs] + [p.counterfactual for p in pairs])
    out = []
    for k, pair in enumerate(track(pairs, description=f"{model.name}: answer log-probabilities", transient=True)):
        terms = by_name[pair.attribute]
        answer, swapped_answer = answers[k], answers[len(pairs) + k]
        expected = terms.swap(answer, pair.to_index)
        target = pair.reference or answer
        target_cf = pair.counterfactual_reference if pair.reference else expected
        gap = model.answer_logprob(at[k], pair.counterfactual, target_cf) - model.answer_logprob(
            at[k], pair.text, target
        )
        out.append(
            PairScore(normalize_answer(swapped_answer) != normalize_answer(expected), gap, answer, swapped_answer)
        )
    return out


@dataclass
class BiasResult:
    """Every model's differences on every pair; `to_dict` is what bias.json holds."""

    kind: str
    gap_unit: str
    attributes: list[dict[str, Any]]
    models: list[str]
    notes: list[dict[str, Any]]
    pairs: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": "bias",
            "kind": self.kind,
            "gap_unit": self.gap_unit,
            "models": self.models,
            "attributes": self.attributes,
            "notes": self.notes,
            "limits": LIMITS,
        }


def summarise(
    kind: str,
    lists: list[TermList],
    pairs: list[Pair],
    scores: dict[str, list[PairScore]],
    *,
    notes: list[dict],
    worst: int = 5,
    seed: int = 0,
) -> BiasResult:
    """Per attribute and model: the rate of changed answers and the mean gaps with intervals, the mean gap towards
    each group, the worst pairs; with two models, whether the second changes more than the first (paired tests)."""
    models = list(scores)
    attributes = []
    for terms in lists:
        where = [k for k, p in enumerate(pairs) if p.attribute == terms.attribute]
        entry: dict[str, Any] = {
            "attribute": terms.attribute,
            "groups": list(terms.groups),
            "source": terms.source,
            "pairs": len(where),
            "rows": len({pairs[k].row for k in where}),
            "models": {},
        }
        if where:
            for model in models:
                entry["models"][model] = _model_summary(pairs, scores[model], where, terms, worst, seed)
            if len(models) == 2:
                entry["comparison"] = _comparison(scores, models, where, seed)
        attributes.append(entry)
    unit = "probability" if kind == "classifier" else "log-probability (nats)"
    rows = [{**asdict(p), "scores": {m: asdict(scores[m][k]) for m in models}} for k, p in enumerate(pairs)]
    return BiasResult(kind, unit, attributes, models, notes, rows)


def _model_summary(
    pairs: list[Pair], scores: list[PairScore], where: list[int], terms: TermList, worst: int, seed: int
) -> dict[str, Any]:
    gaps = np.array([scores[k].gap for k in where])
    changed = np.array([float(scores[k].changed) for k in where])
    by_group = {}
    for group in terms.groups:
        toward = [scores[k].gap for k in where if pairs[k].to_group == group]
        if toward:
            by_group[group] = {"pairs": len(toward), "mean_gap": bootstrap_ci(toward, seed=seed).to_dict()}
    ranked = sorted(where, key=lambda k: -abs(scores[k].gap))[:worst]
    return {
        "changed_rate": bootstrap_ci(changed, seed=seed).to_dict(),
        "mean_abs_gap": bootstrap_ci(np.abs(gaps), seed=seed).to_dict(),
        "mean_gap": bootstrap_ci(gaps, seed=seed).to_dict(),
        "toward_group": by_group,
        "worst": [
            {
                "origin": pairs[k].origin,
                "from": pairs[k].from_group,
                "to": pairs[k].to_group,
                "text": pairs[k].text,
                "counterfactual": pairs[k].counterfactual,
                "gap": scores[k].gap,
                "answer": scores[k].answer,
                "counterfactual_answer": scores[k].counterfactual_answer,
            }
            for k in ranked
        ],
    }


def _comparison(scores: dict[str, list[PairScore]], models: list[str], where: list[int], seed: int) -> dict[str, Any]:
    a, b = (scores[m] for m in models)
    changed = compare([float(a[k].changed) for k in where], [float(b[k].changed) for k in where], seed=seed)
    gap = compare([abs(a[k].gap) for k in where], [abs(b[k].gap) for k in where], seed=seed)
    return {"changed_rate": changed.to_dict(), "mean_abs_gap": gap.to_dict()}
