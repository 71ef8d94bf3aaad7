"""The monitor's signals on numbers worked out by hand, the KS test against scipy's, and the embedding test's
false-positive rate and power on seeded samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tunelab.recipes.monitor import signals


def test_charset_profile_and_distance_by_hand() -> None:
    profile = signals.charset_profile(["ab1 é", "Дa!"])  # 8 characters
    assert profile["latin"] == pytest.approx(3 / 8) and profile["digit"] == pytest.approx(1 / 8)
    assert profile["space"] == pytest.approx(1 / 8) and profile["latin_ext"] == pytest.approx(1 / 8)
    assert profile["cyrillic"] == pytest.approx(1 / 8) and profile["punct"] == pytest.approx(1 / 8)
    assert signals.charset_profile(["中文"])["cjk"] == 1.0
    assert signals.total_variation({"a": 1.0, "b": 0.0}, {"a": 0.25, "b": 0.75}) == pytest.approx(0.75)
    assert signals.total_variation(profile, profile) == 0.0


def test_unseen_rate_refusals_and_json() -> None:
    assert signals.unseen_rate({"what", "is", "the"}, ["What is the date?", "the NEW word"]) == pytest.approx(3 / 7)
    assert signals.unseen_rate(set(), []) == 0.0
    assert signals.is_refusal("I'm sorry, I can't help with that") and signals.is_refusal("As an AI, I ...")
    assert not signals.is_refusal("Sorry is a word; the answer is 4")
    assert signals.is_json('{"a": [1, 2]}') and not signals.is_json("{a: 1}")
    assert signals.share([True, False, False, True]) == 0.5 and signals.share([]) is None


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.2, 0.5):
        a, b = rng.normal(size=300), rng.normal(size=200) + shift
        d, p = signals.ks_test(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=0.02)
    assert signals.ks_test([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)


def test_mmd_false_positive_rate_and_power() -> None:
    """Over 100 seeded same-distribution pairs the test at alpha = 0.05 alarms at about that rate (within three
    binomial standard deviations), and it finds a 0.6-sigma mean shift in 8 dimensions nearly always."""
    rng = np.random.default_rng(1)
    trials, alpha = 100, 0.05
    null = [
        signals.mmd_test(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), 199, seed)[1] for seed in range(trials)
    ]
    rate = float(np.mean(np.array(null) < alpha))
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert np.mean(null) == pytest.approx(0.5, abs=0.1)  # p-values uniform under no drift
    shifted = [
        signals.mmd_test(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 0.6, 199, seed)[1] for seed in range(20)
    ]
    assert np.mean(np.array(shifted) < alpha) >= 0.9
    assert signals.mmd_test(np.zeros((1, 3)), np.ones((5, 3))) == (0.0, 1.0)  # too small to test
