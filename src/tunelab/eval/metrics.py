"""Answer metrics: exact match, token F1, ROUGE-1/2/L, corpus BLEU and corpus chrF.

Every metric reads the answers after `normalize_answer` and splits words on whitespace only. ROUGE comes from
`rouge-score` and chrF from `sacrebleu` (the implementations papers report), but ROUGE is given a whitespace
tokenizer: its default one lower-cases and cuts at every non-alphanumeric character, which would make
"2021-03-05" and "2021 03 05" or two JSON objects look alike when they are not. BLEU stays written by hand
(equal to sacrebleu's with tokenize="none", no smoothing; a test checks it) because its per-example n-gram counts
are what the corpus-level confidence intervals resample (`bleu_stats`, `bleu_from_stats`); chrF exposes the same
pair through sacrebleu's own sufficient statistics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from sacrebleu.metrics.chrf import CHRF

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
"""tunelab's metric name -> rouge-score's name."""


def normalize_answer(text: str) -> str:
    """Strip both ends and collapse every run of whitespace (spaces, tabs, newlines) to one space.

    Nothing else changes: case, punctuation, articles and digits are kept, because answers such as
    "2021-03-05", "Paris" or a JSON object must match exactly. (SQuAD's normaliser lower-cases and drops
    punctuation and articles; that suits prose answers, not formatted ones.)
    """
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style F1 of the two bags of whitespace tokens (after `normalize_answer`).

    Two empty answers score 1.0; one empty answer scores 0.0.
    """
    pred_tokens, ref_tokens = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


class _Whitespace:
    """rouge-score's tokenizer interface: whitespace tokens of the normalised text, case and punctuation kept."""

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


@cache
def _rouge_scorer() -> RougeScorer:
    # rouge-score imports nltk, which imports scipy.stats: seconds at startup, so only when ROUGE is first scored.
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_TYPES.values()), tokenizer=_Whitespace())


def rouge_scores(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 (`rouge_1`, `rouge_2`, `rouge_l`) of one answer against its reference.

    Two empty answers score 1.0 on each (the same answer); rouge-score itself gives 0 there.
    """
    if not normalize_answer(pred) and not normalize_answer(ref):
        return dict.fromkeys(ROUGE_TYPES, 1.0)
    scored = _rouge_scorer().score(ref, pred)
    return {name: float(scored[theirs].fmeasure) for name, theirs in ROUGE_TYPES.items()}


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: precision and recall of the longest common token subsequence, combined harmonically."""
    return rouge_scores(pred, ref)["rouge_l"]


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_stats(pred: str, ref: str, max_order: int = 4) -> list[int]:
    """One example's BLEU counts: clipped matches and totals of each n-gram order, then the two lengths.

    Summed over examples, `bleu_from_stats` turns them into corpus BLEU.
    """
    pred_tokens, ref_tokens = normalize_answer(pred).split(), normalize_answer(ref).split()
    matches, totals = [], []
    for n in range(1, max_order + 1):
        pred_ngrams, ref_ngrams = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
        # Clipping: a predicted n-gram counts at most as often as it occurs in the reference.
        matches.append(sum((pred_ngrams & ref_ngrams).values()))
        totals.append(sum(pred_ngrams.values()))
    return [*matches, *totals, len(pred_tokens), len(ref_tokens)]


def bleu_from_stats(stats: Sequence[float] | np.ndarray) -> float:
    """Corpus BLEU from summed `bleu_stats`: the geometric mean of the n-gram precisions times the brevity
    penalty exp(1 - r/c) when the prediction length c is below the reference length r. An order with no match
    gives 0 (no smoothing)."""
    order = (len(stats) - 2) // 2
    matches, totals = stats[:order], stats[order : 2 * order]
    pred_len, ref_len = stats[-2], stats[-1]
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / order
    brevity = 1.0 if pred_len >= ref_len else math.exp(1 - ref_len / pred_len)
    return float(brevity * math.exp(log_precision))


def bleu(preds: Sequence[str], refs: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) in [0, 1], one reference per prediction, on whitespace tokens.

    Clipped n-gram matches and n-gram counts are summed over the corpus before dividing (not averaged per
    sentence). Equals sacrebleu's `corpus_score` with tokenize="none", smooth_method="none", divided by 100.
    """
    if len(preds) != len(refs):
        raise ValueError(f"bleu needs one reference per prediction, got {len(preds)} predictions, {len(refs)} refs")
    rows = [bleu_stats(p, r, max_order) for p, r in zip(preds, refs, strict=True)]
    return bleu_from_stats(np.sum(rows, axis=0)) if rows else 0.0


@cache
def _chrf() -> CHRF:
    return CHRF()


def chrf_stats(pred: str, ref: str) -> list[int]:
    """One example's chrF sufficient statistics (sacrebleu's character and word n-gram counts)."""
    return list(_chrf()._extract_corpus_statistics([normalize_answer(pred)], [[normalize_answer(ref)]])[0])


def chrf_from_stats(stats: Sequence[float] | np.ndarray) -> float:
    """chrF in [0, 1] from summed `chrf_stats` (sacrebleu's score divided by 100)."""
    return float(_chrf()._compute_score_from_stats([int(s) for s in stats]).score) / 100


def chrf(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (Popović 2015; character 6-grams, beta 2) in [0, 1]: sacrebleu's `corpus_score` / 100."""
    if len(preds) != len(refs):
        raise ValueError(f"chrf needs one reference per prediction, got {len(preds)} predictions, {len(refs)} refs")
    rows = [chrf_stats(p, r) for p, r in zip(preds, refs, strict=True)]
    return chrf_from_stats(np.sum(rows, axis=0)) if rows else 0.0


def aggregate(per_example: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric field that all rows have (text fields such as "prediction" are skipped).

    Booleans are skipped too: a flag is not a score. An empty list gives an empty dict.
    """
    if not per_example:
        return {}
    keys = [k for k, v in per_example[0].items() if is_score(v)]
    keys = [k for k in keys if all(k in row and is_score(row[k]) for row in per_example)]
    return {k: sum(float(row[k]) for row in per_example) / len(per_example) for k in keys}


def is_score(value: Any) -> bool:
    """Whether a prediction row's field is a per-example score: a number that is not a boolean."""
    return isinstance(value, int | float) and not isinstance(value, bool)
