"""The order in which examples are seen, as batches of indices. Deterministic in (seed, epoch), so a resumed
run sees exactly the batches the interrupted run would have seen.

Beyond the default shuffle, a `Schedule` can
- order an epoch as a curriculum: easy examples first, the pool of allowed examples growing with a pacing
  function (linear or root competence, Platanios et al. 2019; or `step`: baby-steps buckets, Spitkovsky et
  al. 2010). Every example is still seen exactly once per epoch;
- sample an epoch (with replacement, same size as the data) to balance classes, or to mix tasks with given
  weights or by temperature (p_task ∝ n_task^(1/T), as in T5/mT5).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from tunelab.data.config import ScheduleSection

Pacing = Literal["linear", "root", "step"]


@dataclass(frozen=True)
class Schedule:
    """What `epoch_batches` needs beyond lengths: difficulty for curricula, sampling weights for mixing."""

    order: Literal["shuffle", "curriculum"] = "shuffle"
    difficulty: tuple[float, ...] | None = None
    """Per example, higher is harder (curriculum only)."""
    pacing: Pacing = "linear"
    start_fraction: float = 0.2
    buckets: int = 4
    curriculum_epochs: int = 1
    """Epochs ordered as a curriculum; later epochs are shuffled."""
    weights: tuple[float, ...] | None = None
    """Per-example sampling weights (class balance, task mixture); None: every example once per epoch."""

    def with_difficulty(self, scores: list[float]) -> Schedule:
        """The same schedule with difficulty scores from elsewhere (the base model's loss: `data.scoring`)."""
        return replace(self, difficulty=tuple(float(s) for s in scores))


def make_schedule(cfg: ScheduleSection, train: Sequence[Any]) -> Schedule:
    """The schedule a config asks for. Difficulty `loss` needs a scoring pass with the model, which the run
    does before training (`data.scoring.apply_loss_difficulty`); until then length stands in for it."""
    difficulty = None
    if cfg.order == "curriculum":
        if cfg.difficulty == "field":
            difficulty = tuple(float(t.difficulty if t.difficulty is not None else 0.0) for t in train)
        else:
            difficulty = tuple(float(len(t.input_ids)) for t in train)
    weights = None
    if cfg.sampling == "balanced":
        weights = balanced_weights([t.label for t in train])
    elif cfg.sampling == "mixture":
        weights = mixture_weights([t.task for t in train], cfg.mix_weights, cfg.temperature)
    return Schedule(
        order=cfg.order,
        difficulty=difficulty,
        pacing=cfg.pacing,
        start_fraction=cfg.start_fraction,
        buckets=cfg.buckets,
        curriculum_epochs=cfg.curriculum_epochs,
        weights=weights,
    )


def balanced_weights(labels: list[str | None]) -> tuple[float, ...]:
    """Per-example weights that give every label the same total weight."""
    counts = Counter(labels)
    return tuple(1.0 / (len(counts) * counts[x]) for x in labels)


def mixture_weights(tasks: list[str], weights: dict[str, float], temperature: float) -> tuple[float, ...]:
    """Per-example weights for a task mixture: each task's share is its weight (normalised) when `weights` are
    given (tasks left out get 0), else n_task^(1/temperature) normalised; then split evenly over its examples."""
    counts = Counter(tasks)
    share = (
        {t: weights.get(t, 0.0) for t in counts} if weights else {t: n ** (1 / temperature) for t, n in counts.items()}
    )
    total = sum(share.values()) or 1.0
    return tuple(share[t] / total / counts[t] for t in tasks)


def competence(progress: float, pacing: Pacing, start: float, buckets: int) -> float:
    """Fraction of the easiest examples available at `progress` (0 to 1) through the curriculum."""
    progress = min(max(progress, 0.0), 1.0)
    if pacing == "linear":
        return min(1.0, start + (1 - start) * progress)
    if pacing == "root":
        return min(1.0, math.sqrt(start**2 + (1 - start**2) * progress))
    return min(1.0, (math.floor(progress * buckets) + 1) / buckets)


def curriculum_order(
    difficulty: tuple[float, ...], batch_size: int, rng: random.Random, pacing: Pacing, start: float, buckets: int
) -> list[int]:
    """Every index once, in batches drawn at random from the easiest `competence` share of the data (not yet
    drawn). The pool always holds enough examples, since competence(t) >= t for every pacing."""
    n = len(difficulty)
    by_difficulty = sorted(range(n), key=lambda i: (difficulty[i], i))
    order: list[int] = []
    pool: list[int] = []
    admitted = 0
    batches = math.ceil(n / batch_size)
    for k in range(batches):
        allowed = max(math.ceil(competence(k / batches, pacing, start, buckets) * n), min(n, (k + 1) * batch_size))
        pool += by_difficulty[admitted:allowed]
        admitted = max(admitted, allowed)
        rng.shuffle(pool)
        take = min(batch_size, len(pool))
        order += pool[:take]
        pool = pool[take:]
    return order + pool


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
    schedule: Schedule | None = None,
) -> list[list[int]]:
    """Batches of example indices for one epoch, and for one process out of `world_size`.

    With `group_by_length`, a shuffled order is cut into mega-batches of 64 batches, each sorted by length, so
    a batch holds similar lengths (little padding) while the order of batches stays random. A curriculum
    epoch keeps its easy-to-hard order (no length grouping); a weighted `schedule` samples the epoch first.
    """
    rng = random.Random(seed * 100_003 + epoch)
    schedule = schedule or Schedule()
    if schedule.order == "curriculum" and schedule.difficulty is not None and epoch < schedule.curriculum_epochs:
        order = curriculum_order(
            schedule.difficulty,
            batch_size * world_size,
            rng,
            schedule.pacing,
            schedule.start_fraction,
            schedule.buckets,
        )
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return _shard(batches, rank, world_size)
    if schedule.weights is not None:
        gen = np.random.default_rng([seed, epoch])
        p = np.asarray(schedule.weights, dtype=np.float64)
        order = gen.choice(len(lengths), size=len(lengths), replace=True, p=p / p.sum()).tolist()
    else:
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
    return _shard(batches, rank, world_size)


def _shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    # Every process must take the same number of steps, so the tail that does not divide evenly is left out.
    usable = len(batches) - len(batches) % world_size if world_size > 1 else len(batches)
    return batches[rank:usable:world_size]
