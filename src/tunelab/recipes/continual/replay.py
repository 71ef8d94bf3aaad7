"""Experience replay: a reservoir of earlier tasks' examples and a schedule that mixes them into a new task.

Algorithm R (Vitter 1985) keeps a uniform sample of everything streamed past it in fixed memory: after n items,
each one is in the buffer with probability capacity / n, whatever the order of tasks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ReservoirBuffer(Generic[T]):
    """A seeded reservoir of at most `capacity` items (Algorithm R)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("a replay buffer needs capacity >= 1")
        self.capacity = capacity
        self.items: list[T] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: T) -> None:
        """Offer one item: kept outright while there is room, else it replaces a random slot with p = capacity/seen."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)  # uniform over 0..seen-1
        if j < self.capacity:
            self.items[j] = item

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self.items)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream exactly (items, count, RNG state), for saving with a run."""
        return {"capacity": self.capacity, "seen": self.seen, "items": list(self.items), "rng": self._rng.getstate()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReservoirBuffer:
        buffer = cls(state["capacity"])
        buffer.items, buffer.seen = list(state["items"]), state["seen"]
        rng = state["rng"]
        # JSON turns the state's tuples into lists; random.setstate wants tuples back.
        buffer._rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        return buffer


def mix_replay(new: Sequence[T], replay: Sequence[T], replay_fraction: float, seed: int = 0) -> list[T]:
    """The new task's items with replay items spread evenly among them, so that `replay_fraction` of the result
    is replay (rounded). Replay items are drawn in a seeded shuffled order, reshuffled when exhausted, so each
    is used about equally often. A fraction of 0 or an empty pool returns `new` unchanged.
    """
    if not 0 <= replay_fraction < 1:
        raise ValueError("replay_fraction must be in [0, 1)")
    if replay_fraction == 0 or not replay or not new:
        return list(new)
    n_replay = round(len(new) * replay_fraction / (1 - replay_fraction))
    rng = random.Random(seed)
    drawn: list[T] = []
    while len(drawn) < n_replay:
        order = list(replay)
        rng.shuffle(order)
        drawn.extend(order[: n_replay - len(drawn)])
    total = len(new) + n_replay
    # Replay slot j sits at the middle of the j-th of n_replay equal stretches of the stream.
    slots = {int((j + 0.5) * total / n_replay) for j in range(n_replay)}
    new_iter, replay_iter = iter(new), iter(drawn)
    return [next(replay_iter) if i in slots else next(new_iter) for i in range(total)]
