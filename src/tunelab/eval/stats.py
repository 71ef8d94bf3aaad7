"""Confidence intervals and paired significance tests for per-example scores.

Every comparison tunelab shows (base vs tuned, run A vs run B, clean vs perturbed) is paired: both sides are scored on
the same examples, so the tests here work on the per-example differences, which is far more sensitive than comparing
two independent intervals. Intervals are percentile bootstraps (Efron & Tibshirani 1993) with a fixed seed, so a
report re-runs to the same numbers; 0/1 scores (exact match, accuracy) are compared with McNemar's test, anything
else with a paired bootstrap (Koehn 2004). Written with numpy and `math` alone: scipy would add nothing here but
an import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
_BLOCK = 256  # resamples drawn at once: bounds memory at _BLOCK x n indices however many examples there are

Statistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """The outcome of comparing side b with side a on the same examples (`delta` is b - a).

    `discordant` is McNemar's pair of counts (examples only a got right, examples only b got right), or None for
    the bootstrap. `significant` is `p_value < alpha`.
    """

    test: str
    delta: Interval
    p_value: float
    alpha: float
    discordant: tuple[int, int] | None = None

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, object]:
        return {
            "test": self.test,
            "delta": self.delta.to_dict(),
            "p_value": self.p_value,
            "alpha": self.alpha,
            "significant": self.significant,
            "discordant": list(self.discordant) if self.discordant is not None else None,
        }


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} needs a non-empty list of per-example scores, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} got a score that is NaN or infinite: score every example with a finite number")
    return array


def _index_blocks(n: int, resamples: int, seed: int):
    """Yield (block, n) arrays of example indices drawn with replacement, `resamples` rows in all."""
    rng = np.random.default_rng(seed)
    left = resamples
    while left > 0:
        size = min(_BLOCK, left)
        yield rng.integers(0, n, size=(size, n))
        left -= size


def _percentile_interval(estimate: float, draws: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(estimate), float(min(low, estimate)), float(max(high, estimate)), confidence)


def _check(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean of per-example scores.

    One example (or all equal) gives a zero-width interval: the data show no spread to resample.
    """
    _check(confidence, resamples)
    array = _as_array(values, "bootstrap_ci")
    draws = np.concatenate([array[idx].mean(axis=1) for idx in _index_blocks(array.size, resamples, seed)])
    return _percentile_interval(float(array.mean()), draws, confidence)


def bootstrap_statistic(
    n: int,
    statistic: Statistic,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of a corpus-level statistic (BLEU, macro-F1, calibration error, ...).

    `statistic(indices)` computes the statistic on the examples at those indices (with repeats); it is called
    once on `arange(n)` for the estimate and once per resample, so keep it cheap or lower `resamples`.
    """
    _check(confidence, resamples)
    if n < 1:
        raise ValueError("bootstrap_statistic needs at least one example")
    estimate = float(statistic(np.arange(n)))
    draws = np.array([statistic(row) for idx in _index_blocks(n, resamples, seed) for row in idx], dtype=np.float64)
    return _percentile_interval(estimate, draws, confidence)


def _paired(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    left, right = _as_array(a, what), _as_array(b, what)
    if left.shape != right.shape:
        raise ValueError(f"{what} compares the same examples on both sides, got {left.size} and {right.size} scores")
    return left, right


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float | None = None,
    statistic: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> PairedTest:
    """Paired bootstrap of b - a: the same resampled examples on both sides.

    Without `statistic` it compares means of per-example scores; with one, `statistic(scores_a, scores_b)` of
    resampled rows (e.g. corpus BLEU of b minus that of a, with the rows' texts looked up by index: pass
    `np.arange(n)` as a and b). The two-sided p-value is twice the share of resampled differences on the far side
    of zero from the observed one, with the usual +1 correction so it is never 0 (Davison & Hinkley 1997).
    """
    _check(confidence, resamples)
    left, right = _paired(a, b, "paired_bootstrap")

    def diff(idx: np.ndarray) -> np.ndarray:
        if statistic is None:
            return right[idx].mean(axis=-1) - left[idx].mean(axis=-1)
        return np.array([statistic(left[row], right[row]) for row in np.atleast_2d(idx)])

    observed = float(diff(np.arange(left.size)[None, :])[0])
    draws = np.concatenate([diff(idx) for idx in _index_blocks(left.size, resamples, seed)])
    if np.all(draws == 0) and observed == 0:
        p_value = 1.0
    else:
        far = np.sum(draws <= 0) if observed > 0 else np.sum(draws >= 0) if observed < 0 else draws.size
        p_value = min(1.0, 2 * (far + 1) / (draws.size + 1))
    interval = _percentile_interval(observed, draws, confidence)
    return PairedTest("paired bootstrap", interval, float(p_value), 1 - confidence if alpha is None else alpha)


def _binary(array: np.ndarray) -> bool:
    return bool(np.isin(array, (0.0, 1.0)).all())


def mcnemar(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    alpha: float | None = None,
) -> PairedTest:
    """McNemar's test of two 0/1 scorings of the same examples.

    Only discordant examples count: n01 right only under a, n10 right only under b. With fewer than 25 of them
    the exact two-sided binomial test is used (p = 2 P(X <= min) for X ~ Bin(n01 + n10, 1/2)); otherwise the
    chi-square statistic with continuity correction (|n01 - n10| - 1)² / (n01 + n10) on 1 degree of freedom.
    The difference's interval is Wald's for paired proportions, which is what the test is about.
    """
    _check(confidence, 1)
    left, right = _paired(a, b, "mcnemar")
    if not (_binary(left) and _binary(right)):
        raise ValueError("mcnemar needs 0/1 scores on both sides (exact match, accuracy); use paired_bootstrap")
    only_a = int(np.sum((left == 1) & (right == 0)))
    only_b = int(np.sum((left == 0) & (right == 1)))
    discordant = only_a + only_b
    if discordant == 0:
        p_value, name = 1.0, "McNemar (exact)"
    elif discordant < 25:
        tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1)) / 2**discordant
        p_value, name = min(1.0, 2 * tail), "McNemar (exact)"
    else:
        statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
        p_value, name = math.erfc(math.sqrt(statistic / 2)), "McNemar (chi-square)"
    n = left.size
    delta = (only_b - only_a) / n
    z = _normal_quantile(1 - (1 - confidence) / 2)
    spread = z * math.sqrt(max((only_a + only_b) / n - delta**2, 0.0) / n)
    interval = Interval(delta, delta - spread, delta + spread, confidence)
    return PairedTest(name, interval, float(p_value), 1 - confidence if alpha is None else alpha, (only_a, only_b))


def compare(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float | None = None,
) -> PairedTest:
    """The paired test that fits the scores: McNemar when every score is 0 or 1, a paired bootstrap otherwise."""
    left, right = _paired(a, b, "compare")
    if _binary(left) and _binary(right):
        return mcnemar(left, right, confidence=confidence, alpha=alpha)
    return paired_bootstrap(left, right, confidence=confidence, resamples=resamples, seed=seed, alpha=alpha)


def shown_verdict(test: dict[str, Any]) -> tuple[float, bool]:
    """The p-value a table shows for a paired test document (`Comparison.to_dict`: the Holm-adjusted `p_holm`
    where the test was read with others) and whether the difference is significant at that p."""
    p = float(test.get("p_holm", test["p_value"]))
    return p, bool(test["significant"]) and p < float(test.get("alpha", 0.05))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given) for several comparisons read together."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF, by bisection on `math.erf` (exact to 1e-12; called a few times)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
