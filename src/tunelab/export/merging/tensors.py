"""The maths of model merging, one tensor at a time: linear, task arithmetic, TIES, DARE (TIES and linear).

The semantics are mergekit's (`generalized_task_arithmetic.py`, `sparsify.py`), so a mergekit recipe gives the
same numbers here:

1. task vectors δ_i = θ_i - θ_base;
2. sparsify each: TIES keeps the int(density·n) entries of largest |δ_i|; DARE keeps each entry with probability
   `density` and, with `rescale`, scales the survivors so the L1 norm of δ_i is unchanged (1/density in
   expectation, the DARE paper's factor);
3. weight them: w_i·δ_i;
4. TIES sign election (TIES, DARE-TIES): the elected sign of an entry is the sign of Σ_i w_i·δ_i (0 counts as +);
   only entries whose sign agrees are kept (zeros never agree, so pruned entries drop out of the mean);
5. `normalize`: divide by the sum of the weights that were kept at that entry (the "disjoint mean"; 0 -> 1);
6. scale by `lambda` and add to the base.

Why not peft's `merge_utils` (what `add_weighted_adapter` uses): it elects signs on the *unweighted* vectors,
divides by a count instead of the kept weights, takes one density for all models and draws DARE masks from
torch's global RNG. We follow mergekit so recipes carry over, and draw from a seeded generator per tensor so a
merge is reproducible whatever order tensors are processed in.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from tunelab.core.registry import register

Sparsify = Literal["magnitude", "random"]


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: which steps of the recipe above it runs, and its defaults (as in mergekit)."""

    name: str
    needs_base: bool
    """Task-vector methods need the common base model; linear averages the models themselves."""
    sparsify: Sparsify | None
    consensus: bool
    """TIES sign election and the disjoint mean."""
    default_normalize: bool
    default_rescale: bool
    description: str


def _register(*methods: MergeMethod) -> dict[str, MergeMethod]:
    registry: dict[str, MergeMethod] = {}
    for method in methods:
        register(registry, method.name, method, "merge method")
    return registry


MERGE_METHODS: dict[str, MergeMethod] = _register(
    MergeMethod("linear", False, None, False, True, False, "weighted average of the models (model soup)"),
    MergeMethod("task_arithmetic", True, None, False, False, False, "base + lambda * sum of weighted task vectors"),
    MergeMethod("ties", True, "magnitude", True, True, False, "trim by magnitude, elect sign, disjoint mean"),
    MergeMethod("dare_ties", True, "random", True, False, True, "random drop and rescale, then TIES sign election"),
    MergeMethod("dare_linear", True, "random", False, False, True, "random drop and rescale, then task arithmetic"),
)


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density·n) entries of largest magnitude (at least one), zero the rest.

    mergekit refuses a density that keeps nothing; tiny tensors (a bias of 2 entries at density 0.3) would then
    stop a whole merge, so one entry is kept instead. Equal magnitudes keep the earlier entry (a stable sort).
    """
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    keep = torch.argsort(flat.abs(), descending=True, stable=True)[:k]
    mask = torch.zeros_like(flat)
    mask[keep] = 1
    return (flat * mask).reshape(delta.shape)


def random_prune(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool) -> torch.Tensor:
    """DARE: keep each entry with probability `density`; with `rescale`, restore the L1 norm of `delta`."""
    if density >= 1:
        return delta
    mask = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    # mergekit's guard: a vanishing tensor (or one whose survivors are all zero) is returned as masked.
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def tensor_generator(seed: int, name: str, index: int) -> torch.Generator:
    """A CPU generator for model `index`'s tensor `name`: the same masks whatever order tensors are merged in."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{index}:{name}".encode()))


def merge_deltas(
    method: MergeMethod,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    normalize: bool,
    lam: float = 1.0,
    rescale: bool = True,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """The merged task vector λ·mix(δ_1..δ_n) of a task-vector method (steps 2-6 of the module docstring)."""
    if not method.needs_base:
        raise ValueError(f"{method.name} merges models, not task vectors: use linear_merge")
    pruned = []
    for i, (delta, density) in enumerate(zip(deltas, densities, strict=True)):
        if method.sparsify == "magnitude":
            delta = magnitude_prune(delta, density)
        elif method.sparsify == "random":
            generator = generators[i] if generators is not None else torch.Generator().manual_seed(i)
            delta = random_prune(delta, density, generator, rescale)
        pruned.append(delta)
    stacked = torch.stack(pruned)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * (stacked.dim() - 1))
    weighted = stacked * w
    if method.consensus:
        elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
        agree = weighted.sign() == elected
        mixed = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return mixed * lam if lam != 1 else mixed


def linear_merge(tensors: Sequence[torch.Tensor], weights: Sequence[float], *, normalize: bool) -> torch.Tensor:
    """Σ w_i·θ_i, divided by Σ w_i when `normalize` (mergekit's `linear`)."""
    stacked = torch.stack(list(tensors))
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * (stacked.dim() - 1))
    merged = (stacked * w).sum(0)
    return merged / w.sum() if normalize else merged
