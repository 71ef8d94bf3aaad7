"""The order in which examples are seen, as batches of indices. Deterministic in (seed, epoch), so a resumed
run sees exactly the batches the interrupted run would have seen."""

from __future__ import annotations

import random


def epoch_batches(
    lengths: list[int],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    shuffle: bool = True,
    group_by_length: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """Batches of example indices for one epoch, and for one process out of `world_size`.

    With `group_by_length`, a shuffled order is cut into mega-batches of 64 batches, each sorted by length, so
    a batch holds similar lengths (little padding) while the order of batches stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    if group_by_length:
        mega = batch_size * 64
        order = [
            i
            for start in range(0, len(order), mega)
            for i in sorted(order[start : start + mega], key=lengths.__getitem__)
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length and shuffle:
        rng.shuffle(batches)
    # Every process must take the same number of steps, so the tail that does not divide evenly is left out.
    usable = len(batches) - len(batches) % world_size if world_size > 1 else len(batches)
    return batches[rank:usable:world_size]
