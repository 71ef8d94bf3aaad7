"""Intervals and paired tests against hand-computed cases and their stated coverage."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.eval.stats import (
    bootstrap_ci,
    bootstrap_statistic,
    compare,
    holm,
    mcnemar,
    paired_bootstrap,
)


def scores(only_a: int, only_b: int, both: int, neither: int) -> tuple[list[float], list[float]]:
    a = [1.0] * only_a + [0.0] * only_b + [1.0] * both + [0.0] * neither
    b = [0.0] * only_a + [1.0] * only_b + [1.0] * both + [0.0] * neither
    return a, b


def test_mcnemar_exact_on_a_hand_table() -> None:
    # 2 examples right only before, 8 only after: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 112/1024.
    test = mcnemar(*scores(2, 8, 30, 10))
    assert test.test == "McNemar (exact)" and test.discordant == (2, 8)
    assert test.p_value == pytest.approx(112 / 1024)
    assert test.delta.estimate == pytest.approx(6 / 50)
    assert not test.significant


def test_mcnemar_chi_square_with_continuity_correction() -> None:
    # (|10 - 25| - 1)^2 / 35 = 5.6 on 1 degree of freedom: p = 0.017960 (scipy.stats.chi2.sf(5.6, 1)).
    test = mcnemar(*scores(10, 25, 40, 25))
    assert test.test == "McNemar (chi-square)"
    assert test.p_value == pytest.approx(0.0179604775, rel=1e-6)
    assert test.significant and test.delta.low > 0


def test_mcnemar_without_disagreement_and_refusing_non_binary() -> None:
    assert mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0.5, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="same examples"):
        mcnemar([1, 0], [1, 0, 1])


def test_bootstrap_of_equal_values_has_no_width() -> None:
    interval = bootstrap_ci([0.5] * 40)
    assert (interval.low, interval.estimate, interval.high) == (0.5, 0.5, 0.5)


def test_bootstrap_interval_covers_a_bernoulli_mean_at_its_level() -> None:
    rng = np.random.default_rng(1)
    hits = sum(bootstrap_ci(rng.random(200) < 0.3, resamples=500, seed=i).contains(0.3) for i in range(200))
    assert 0.89 <= hits / 200 <= 0.99  # 95% intervals: the percentile bootstrap runs slightly narrow at n=200


def test_bootstrap_is_reproducible_and_refuses_nan() -> None:
    values = np.random.default_rng(0).random(50)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_bootstrap_statistic_of_a_corpus_measure() -> None:
    values = np.arange(10, dtype=float)
    interval = bootstrap_statistic(10, lambda idx: float(values[idx].max()), resamples=300)
    assert interval.estimate == 9.0 and interval.high == 9.0 and interval.low < 9.0


def test_paired_bootstrap_sees_a_shift_and_not_a_copy() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(300)
    shifted = paired_bootstrap(a, a + 0.05 + rng.normal(0, 0.05, 300))
    assert shifted.significant and shifted.delta.low > 0 and shifted.p_value < 0.01
    same = paired_bootstrap(a, a)
    assert same.p_value == 1.0 and same.delta.estimate == 0.0
    noise = paired_bootstrap(a, a + rng.normal(0, 0.05, 300))
    assert noise.delta.contains(0.0)


def test_paired_bootstrap_of_a_corpus_statistic() -> None:
    a, b = np.zeros(20), np.ones(20)
    test = paired_bootstrap(a, b, statistic=lambda x, y: float(y.max() - x.max()), resamples=200)
    assert test.delta.estimate == 1.0 and test.significant


def test_compare_picks_the_test_by_the_scores() -> None:
    assert compare(*scores(1, 5, 10, 4)).test.startswith("McNemar")
    assert compare([0.2, 0.4, 0.9], [0.3, 0.5, 0.7]).test == "paired bootstrap"


def test_holm_adjusts_in_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []
