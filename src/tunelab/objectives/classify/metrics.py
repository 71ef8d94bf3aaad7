"""Scores that need every prediction rather than running sums: macro-F1 over classes, entity F1 over BIO spans."""

from __future__ import annotations

from collections.abc import Sequence


def macro_f1(predicted: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """The unweighted mean of per-class F1 over the classes that occur in `gold` or `predicted` (a class neither
    has nor predicts would add an F1 of 0/0; scikit-learn's `f1_score(average="macro")` skips it the same way)."""
    f1s = []
    for c in range(num_labels):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold, strict=True))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def is_bio(tags: Sequence[str]) -> bool:
    """Whether a tag set is BIO-style: every tag is O or starts with B- / I-, and some tag is an entity tag."""
    return any(t[:2] in ("B-", "I-") for t in tags) and all(t == "O" or t[:2] in ("B-", "I-") for t in tags)


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities as (type, first word, last word + 1). B-X starts an entity; I-X continues an open X entity or,
    after O or another type, starts one (as conlleval and seqeval's default mode read ill-formed sequences)."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        if kind is not None and (tag == "O" or prefix == "B" or name != kind):
            spans.add((kind, start, i))
            kind = None
        if tag != "O" and kind is None:
            kind, start = name, i
    return spans


def entity_f1(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> float:
    """Micro-averaged F1 over exact entity spans of every sentence (CoNLL's measure)."""
    tp = n_pred = n_gold = 0
    for p, g in zip(predicted, gold, strict=True):
        ps, gs = bio_spans(p), bio_spans(g)
        tp, n_pred, n_gold = tp + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
