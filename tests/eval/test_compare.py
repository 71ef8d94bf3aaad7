"""Intervals and paired tests from prediction rows (eval.compare) and the table that shows them (eval.table)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from tunelab.eval.compare import metric_interval, paired_test, same_rows, source_of, summarize
from tunelab.eval.metrics import bleu
from tunelab.eval.table import comparison_table


def _rows(exact: list[int], *, reference: str = "red") -> list[dict]:
    return [{"origin": f"f:{k}", "prompt": f"q{k}", "reference": reference, "prediction": "red" if e else "blue",
             "exact_match": float(e)} for k, e in enumerate(exact)]  # fmt: skip


def _render(table) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_exact_match_is_compared_by_mcnemar_with_the_hand_computed_p_value() -> None:
    # 20 rows: both right on 8, only a on 1, only b on 7, both wrong on 4. Discordant 1 + 7 = 8 < 25: exact
    # binomial, p = 2 * P(X <= 1) for X ~ Bin(8, 1/2) = 2 * 9/256.
    a = [1] * 8 + [1] + [0] * 7 + [0] * 4
    b = [1] * 8 + [0] + [1] * 7 + [0] * 4
    comparison = summarize({"a": ({"exact_match": 9 / 20}, _rows(a)), "b": ({"exact_match": 15 / 20}, _rows(b))})
    test = comparison.tests["exact_match"]
    assert test.test == "McNemar (exact)" and test.discordant == (1, 7)
    assert test.p_value == pytest.approx(2 * 9 / 256)
    assert test.significant is False  # 0.0703: six more right answers out of 20 is not yet evidence
    assert test.delta.estimate == pytest.approx(6 / 20)
    assert comparison.intervals["a"]["exact_match"].estimate == pytest.approx(9 / 20)
    assert comparison.paired and comparison.examples == 20


def test_all_equal_scores_give_a_zero_width_interval_and_no_difference() -> None:
    rows = _rows([1] * 10)
    interval = metric_interval("exact_match", rows)
    assert interval is not None and (interval.low, interval.high) == (1.0, 1.0)
    test = paired_test("exact_match", rows, rows)
    assert test is not None and test.p_value == 1.0 and not test.significant


def test_intervals_cover_a_bernoulli_rate_near_their_level() -> None:
    # 200 experiments of 100 coin flips at p = 0.3: a 90% interval should hold 0.3 in about 180 of them.
    rng = np.random.default_rng(1)
    held = 0
    for k in range(200):
        rows = [{"exact_match": float(x)} for x in rng.random(100) < 0.3]
        interval = metric_interval("exact_match", rows, confidence=0.9, resamples=400, seed=k)
        held += interval is not None and interval.contains(0.3)
    assert 165 <= held <= 195


def test_corpus_bleu_is_resampled_not_averaged() -> None:
    refs = ["the cat sat on the mat today", "a dog ran in the park at noon", "it rained all day long here"] * 4
    preds = ["the cat sat on the mat", "a dog ran in a park at noon", "it rained all day long here"] * 4
    pairs = enumerate(zip(refs, preds, strict=True))
    rows = [{"origin": str(k), "reference": r, "prediction": p} for k, (r, p) in pairs]
    assert source_of("bleu", rows) == "bleu"
    interval = metric_interval("bleu", rows, resamples=300)
    assert interval is not None and interval.estimate == pytest.approx(bleu(preds, refs))
    assert interval.low <= interval.estimate <= interval.high and interval.high > interval.low
    worse = [{**r, "prediction": "nothing at all like it"} for r in rows]
    test = paired_test("bleu", worse, rows, resamples=300)
    assert test is not None and test.test == "paired bootstrap" and test.significant
    assert test.delta.estimate == pytest.approx(bleu(preds, refs))  # the worse side scores 0


def test_metrics_without_per_example_evidence_keep_their_value_without_interval() -> None:
    rows = _rows([1, 0, 1, 1])
    comparison = summarize({"a": ({"val_loss": 1.5, "exact_match": 0.75}, rows), "b": ({"val_loss": 1.2}, rows)})
    assert "val_loss" not in comparison.intervals["a"] and "val_loss" not in comparison.tests
    assert comparison.values["b"]["val_loss"] == 1.2
    json.dumps(comparison.to_dict())  # plain JSON


def test_rows_of_other_examples_are_not_paired() -> None:
    a, b = _rows([1, 0, 1]), _rows([1, 1, 1], reference="blue")
    assert not same_rows(a, b)
    comparison = summarize({"a": ({"exact_match": 2 / 3}, a), "b": ({"exact_match": 0.0}, b)})
    assert not comparison.paired and comparison.tests == {}
    assert comparison.to_dict()["tests"] == {}


def test_classifier_aliases_read_the_rows_scores() -> None:
    rows = [{"origin": str(k), "text": "t", "label": g, "prediction": p, "accuracy": float(g == p), "confidence": 0.9}
            for k, (g, p) in enumerate(zip("aabbab", "abbbaa", strict=True))]  # fmt: skip
    assert source_of("val_acc", rows) == "accuracy" and source_of("val_macro_f1", rows) == "macro_f1"
    interval = metric_interval("val_macro_f1", rows, resamples=200)
    # a: tp 2 (rows 0, 5), fp 1, fn 1 -> 2/3; b: tp 2, fp 1, fn 1 -> 2/3.
    assert interval is not None and interval.estimate == pytest.approx(2 / 3)


def test_table_marks_a_difference_that_is_not_significant() -> None:
    a = [1] * 8 + [1] + [0] * 7 + [0] * 4  # p = 0.07 against b: n.s.
    b = [1] * 8 + [0] + [1] * 7 + [0] * 4
    much = [1] * 20  # against a: 11 discordant, all one way, p = 2 / 2**11
    comparison = summarize({"a": ({"exact_match": 9 / 20}, _rows(a)), "b": ({"exact_match": 15 / 20}, _rows(b))})
    text = _render(comparison_table(comparison, title="t"))
    line = next(x for x in text.splitlines() if x.startswith("│ exact_match"))
    cells = [c.strip() for c in line.split("│")[1:-1]]
    assert cells[1].startswith("45.0% [") and cells[2].startswith("75.0% [")
    assert cells[3].startswith("+30.0 pp [") and cells[3].endswith("n.s.")
    assert cells[4] == "0.070"
    assert "McNemar (exact)" in text
    clear = summarize({"a": ({"exact_match": 9 / 20}, _rows(a)), "b": ({"exact_match": 1.0}, _rows(much))})
    line = next(x for x in _render(comparison_table(clear)).splitlines() if x.startswith("│ exact_match"))
    assert "n.s." not in line and "<0.001" in line
    assert math.isclose(clear.tests["exact_match"].p_value, 2 / 2**11)
