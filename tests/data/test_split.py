"""Splits: reproducible, disjoint, and stratified splits keep every label's share."""

from __future__ import annotations

from collections import Counter

from tunelab.data.split import random_split, split_indices


def test_random_split_is_reproducible_and_disjoint() -> None:
    train, val = split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert list(val) == list(split_indices(100, 0.1, seed=3)[1]) != list(split_indices(100, 0.1, seed=4)[1])
    assert random_split(["a", "b"], 0.0, 0) == (["a", "b"], [])
    assert len(random_split(["a", "b", "c"], 0.01, 0)[1]) == 1  # at least one held out


def test_stratified_split_keeps_each_label_share() -> None:
    labels = ["a"] * 90 + ["b"] * 10 + ["c"]  # 'c' has one item: it stays in training
    train, val = split_indices(len(labels), 0.2, seed=0, strata=labels)
    assert Counter(labels[i] for i in val) == {"a": 18, "b": 2}
    assert sorted([*train, *val]) == list(range(len(labels)))
