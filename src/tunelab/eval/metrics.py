"""Answer metrics: exact match, token F1, ROUGE-L and corpus BLEU, each on whitespace tokens.

Written by hand rather than pulled from `evaluate`/`sacrebleu`/`rouge-score`: each is a few lines, and those
libraries bring their own tokenisers and normalisation (lower-casing, punctuation splitting) that would make
"2021-03-05" and "2021-3-5" or two JSON objects look closer than they are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any


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


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming over one row at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1: precision and recall of the longest common token subsequence, combined harmonically.

    Tokens are whitespace tokens after `normalize_answer` (case kept). Two empty answers score 1.0.
    """
    pred_tokens, ref_tokens = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    lcs = _lcs_length(pred_tokens, ref_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(preds: Sequence[str], refs: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) in [0, 1], one reference per prediction, on whitespace tokens.

    Clipped n-gram matches and n-gram counts are summed over the corpus before dividing (not averaged per
    sentence); the score is the geometric mean of the 1..`max_order` precisions times the brevity penalty
    exp(1 - r/c) when the total prediction length c is below the total reference length r. No smoothing:
    an order with no match gives 0. Equals sacrebleu's `corpus_score` with tokenize="none",
    smooth_method="none", divided by 100.
    """
    if len(preds) != len(refs):
        raise ValueError(f"bleu needs one reference per prediction, got {len(preds)} predictions, {len(refs)} refs")
    matches, totals = [0] * max_order, [0] * max_order
    pred_len = ref_len = 0
    for pred, ref in zip(preds, refs, strict=True):
        pred_tokens, ref_tokens = normalize_answer(pred).split(), normalize_answer(ref).split()
        pred_len, ref_len = pred_len + len(pred_tokens), ref_len + len(ref_tokens)
        for n in range(1, max_order + 1):
            pred_ngrams, ref_ngrams = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
            # Clipping: a predicted n-gram counts at most as often as it occurs in the reference.
            matches[n - 1] += sum((pred_ngrams & ref_ngrams).values())
            totals[n - 1] += sum(pred_ngrams.values())
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_order
    brevity = 1.0 if pred_len >= ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def aggregate(per_example: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric field that all rows have (text fields such as "prediction" are skipped).

    Booleans are skipped too: a flag is not a score. An empty list gives an empty dict.
    """
    if not per_example:
        return {}

    def numeric(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    keys = [k for k, v in per_example[0].items() if numeric(v)]
    keys = [k for k in keys if all(k in row and numeric(row[k]) for row in per_example)]
    return {k: sum(float(row[k]) for row in per_example) / len(per_example) for k in keys}
