"""Packing: several short examples in one sequence, so batches carry tokens instead of padding.

Packed examples must not see each other: each keeps its own positions (restarting at 0) and the first token of
each packed example carries no loss (it would be predicted from the previous example's last token). With
`collate`'s `position_ids` transformers builds a block-diagonal causal mask (or uses varlen flash attention).
"""

from __future__ import annotations

from tunelab.data.tokenize import IGNORE, Tokenized


def pack(items: list[Tokenized], max_length: int) -> list[Tokenized]:
    """Best-fit-decreasing packing into sequences of at most `max_length` tokens. Deterministic; every example
    ends up in exactly one sequence, in full (examples are already at most `max_length` long)."""
    return [_join([items[i] for i in sorted(b)]) for b in pack_indices([len(t.input_ids) for t in items], max_length)]


def pack_indices(lengths: list[int], max_length: int) -> list[list[int]]:
    """Groups of indices whose lengths sum to at most `max_length` (best fit, longest first).

    Bins are kept in buckets by the space they have left, so finding the tightest bin that fits is a short
    walk up from the item's length instead of a search over all bins."""
    by_space: list[list[int]] = [[] for _ in range(max_length + 1)]
    bins: list[list[int]] = []
    space: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = min(lengths[i], max_length)
        fit = next((s for s in range(n, max_length + 1) if by_space[s]), None)
        if fit is None:
            b = len(bins)
            bins.append([i])
            space.append(max_length - n)
        else:
            b = by_space[fit].pop()
            bins[b].append(i)
            space[b] -= n
        by_space[space[b]].append(b)
    return bins


def _join(parts: list[Tokenized]) -> Tokenized:
    if len(parts) == 1:
        only = parts[0]
        return Tokenized(only.input_ids, only.labels, only.origin, only.task, only.label, [len(only.input_ids)])
    ids: list[int] = []
    labels: list[int] = []
    for k, t in enumerate(parts):
        ids += t.input_ids
        labels += [IGNORE, *t.labels[1:]] if k else t.labels
    origin = f"{parts[0].origin} (+{len(parts) - 1} packed)"
    return Tokenized(ids, labels, origin, parts[0].task, None, [len(t.input_ids) for t in parts])


def padding_waste(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the tokens in right-padded batches that are padding."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1 - sum(lengths[i] for b in batches for i in b) / total if total else 0.0
