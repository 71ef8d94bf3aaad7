"""Train/validation splits: random, or stratified so every label (or task) keeps its share on both sides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def random_split(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out `fraction` of the items (at least one when the fraction is positive), reproducibly."""
    train, held = split_indices(len(items), fraction, seed)
    return [items[i] for i in train], [items[i] for i in held]


def split_indices(
    n: int, fraction: float, seed: int, strata: Sequence[str | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices, both ascending. With `strata` (a label or task per item), each stratum
    gives `fraction` of its items (rounded, at least one from strata of two or more items), so a rare class is
    not left out of validation by chance. Numpy throughout: 9 bytes per item, for millions of rows."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    if strata is None:
        held[rng.permutation(n)[: min(n - 1, max(1, round(n * fraction)))]] = True
    else:
        keys = np.asarray([str(s) for s in strata])
        for key in np.unique(keys):  # sorted, so the draws do not depend on the order strata first appear in
            members = np.flatnonzero(keys == key)
            take = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
            held[rng.permutation(members)[:take]] = True
        if not held.any():  # every stratum has a single item: fall back to a plain random split
            return split_indices(n, fraction, seed)
    return np.flatnonzero(~held), np.flatnonzero(held)
