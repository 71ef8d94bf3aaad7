"""Train/validation splits: random, or stratified so every label (or task) keeps its share on both sides."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def random_split(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out `fraction` of the items (at least one when the fraction is positive), reproducibly."""
    train, held = split_indices(len(items), fraction, seed)
    return [items[i] for i in train], [items[i] for i in held]


def split_indices(
    n: int, fraction: float, seed: int, strata: Sequence[str | None] | None = None
) -> tuple[list[int], list[int]]:
    """(train, validation) indices, both in ascending order. With `strata` (a label or task per item), each
    stratum gives `fraction` of its items (rounded, at least one from strata of two or more items), so a rare
    class is not left out of validation by chance."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    if strata is None:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        held = set(order[: min(n - 1, max(1, round(n * fraction)))])
    else:
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, key in enumerate(strata):
            groups[key].append(i)
        rng = random.Random(seed)
        held = set()
        for key in sorted(groups, key=str):
            members = groups[key]
            rng.shuffle(members)
            take = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) > 1 else 0
            held.update(members[:take])
        if not held:  # every stratum has a single item: fall back to a plain random split
            return split_indices(n, fraction, seed)
    return [i for i in range(n) if i not in held], sorted(held)
