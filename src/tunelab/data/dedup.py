"""Exact and near-duplicate detection: content hashes, MinHash signatures, LSH banding, and clustering.

Written with numpy instead of `datasketch`'s MinHash/MinHashLSH objects because those cost a Python object
and several dict entries per row (about a kilobyte and ~100 µs each); here a chunk of rows is hashed in a few
vectorised operations, and the LSH index is a column of 64-bit band keys per band that is sorted, not a dict,
so a million rows need a few megabytes per band. The scheme is datasketch's: the same permutation family
(its default "affine32") and the same choice of (bands, rows) for a threshold; a test checks the signatures
against datasketch's.

Candidates that share a band are verified with the exact Jaccard similarity of their shingle sets, so the
threshold is crisp: two rows are near duplicates iff their shingle Jaccard is at least the threshold (up to
LSH missing a pair, which for similarities well above the threshold is very unlikely).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np

from tunelab.data.records import Example

MAX_HASH = np.uint64((1 << 32) - 1)
_NON_WORD = re.compile(r"[\W_]+")
_SPACES = re.compile(r"\s+")
_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum()})


def key_text(example: Example) -> str:
    """The record's content as compared for exact duplicates: kind, roles and texts, Unicode- and
    whitespace-normalised. The label is left out, so the same text with two labels counts as a duplicate
    (a label conflict)."""
    parts = [example.kind]
    parts += [f"{m.role}:{_spaced(m.content)}" for m in example.messages]
    for name, text in example.texts():
        if not name.startswith("messages["):
            parts.append(f"{name}:{_spaced(text)}")
    joined = "\x1f".join(parts)
    return joined if joined.isascii() else unicodedata.normalize("NFKC", joined)


def _spaced(text: str) -> str:
    """Runs of whitespace as one space, ends stripped."""
    if text.isprintable() and "  " not in text:  # no tab, newline or other break, no double space: nothing to do
        return text.strip()
    return _SPACES.sub(" ", text).strip()


def exact_hash(example: Example) -> int:
    """A 63-bit hash of `key_text` (63 bits so it fits numpy's int64 as well)."""
    digest = hashlib.blake2b(key_text(example).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def near_text(example: Example) -> str:
    """The record's content as compared for near duplicates: lower case, punctuation and spacing removed."""
    return near_form(example.content())


def near_form(text: str) -> str:
    """`text` as near duplicates are compared (`near_text` of a record whose content it is)."""
    if text.isascii():  # the same as below, by a character table: 7 against 17 µs on a short chat row
        return " ".join(text.lower().translate(_ASCII_NON_WORD).split())
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingle_batch(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the character n-grams (UTF-8 bytes) of many texts at once, and how many belong to each
    text (a text shorter than `ngram` is one shingle). Repeats within a text are kept; MinHash ignores them."""
    if not texts:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    encoded = [t.encode("utf-8", "surrogatepass").ljust(ngram, b"\0") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    width = len(data) - ngram + 1
    h = np.zeros(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(ngram):  # polynomial hash of every window, wrapping modulo 2^64 on purpose
            h = h * np.uint64(0x100000001B3) + data[k : k + width]
        # splitmix64 finaliser: spread the polynomial hash over all 64 bits before keeping 32 of them.
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    # Keep the windows that lie inside one text.
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    position = np.arange(len(data)) - np.repeat(starts, lengths)
    inside = (position <= np.repeat(lengths - ngram, lengths))[:width]
    return (h[inside] & MAX_HASH).astype(np.uint32), lengths - ngram + 1


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values: one sort and one comparison, where numpy 2's `np.unique` hashes integers,
    100x slower on millions of them."""
    ordered = np.sort(values)
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


class ShingleSets:
    """The unique shingle sets of many texts, held as one flat array, and the exact Jaccard similarity of many
    pairs of them at once (the shared shingles of a pair are found by one sort instead of a set operation per
    pair)."""

    BUDGET = 1 << 22
    """Shingles compared in one sort (32 MB of keys)."""

    def __init__(self, texts: list[str], ngram: int) -> None:
        hashes, counts = shingle_batch(texts, ngram)
        owner = np.repeat(np.arange(len(texts), dtype=np.uint64), counts)
        unique = distinct((owner << np.uint64(32)) | hashes.astype(np.uint64))
        self.hashes = (unique & MAX_HASH).astype(np.uint32)
        self.lengths = np.bincount((unique >> np.uint64(32)).astype(np.int64), minlength=len(texts))
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)

    def jaccard(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity of text a[k] and text b[k] for every k (indices into the texts given)."""
        out = np.empty(len(a), dtype=np.float64)
        sizes = self.lengths[a] + self.lengths[b]
        ends = np.cumsum(sizes)
        start = 0
        while start < len(a):
            base = ends[start - 1] if start else 0
            stop = max(int(np.searchsorted(ends, base + self.BUDGET, side="right")), start + 1)
            out[start:stop] = self._jaccard(a[start:stop], b[start:stop])
            start = stop
        return out

    def _jaccard(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        pair = np.arange(len(a), dtype=np.uint64)
        keys = np.concatenate([
            (np.repeat(pair, self.lengths[side]) << np.uint64(32))
            | self.hashes[ranges(self.starts[side], self.lengths[side])].astype(np.uint64)
            for side in (a, b)
        ])  # fmt: skip
        keys.sort()
        shared = keys[1:][keys[1:] == keys[:-1]] >> np.uint64(32)  # each set is unique: a repeat is in both
        inter = np.bincount(shared.astype(np.int64), minlength=len(a))
        union = self.lengths[a] + self.lengths[b] - inter
        return np.divide(inter, union, out=np.ones(len(a)), where=union > 0)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start[0] .. start[0]+length[0]-1, then those of the second range, and so on."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(offsets - starts, lengths)


class MinHasher:
    """MinHash signatures for many texts at once, with datasketch's default ("affine32") scheme: each 32-bit
    shingle hash is pre-mixed with the MurmurHash3 finaliser, then permuted by h -> a*h + b mod 2^32 (odd a)."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        gen = np.random.RandomState(seed)  # the same draws as datasketch.MinHash(num_perm, seed)
        self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        self.num_perm, self.ngram = num_perm, ngram

    def signatures(self, hashes: np.ndarray, counts: np.ndarray, budget: int = 1 << 14) -> np.ndarray:
        """(len(counts), num_perm) uint32 signatures of texts whose shingle hashes lie one after another in
        `hashes` (`counts[i]` > 0 of them for text i), `budget` shingles at a time: the (permutations x
        shingles) matrix then stays in cache (2 MB); at 2^17 shingles the same work takes 10x longer."""
        out = np.empty((len(counts), self.num_perm), dtype=np.uint32)
        ends = np.cumsum(counts)
        start_text, start = 0, 0
        while start_text < len(counts):
            # as many whole texts as fit in the budget (at least one)
            stop_text = max(int(np.searchsorted(ends, start + budget, side="right")), start_text + 1)
            stop = int(ends[stop_text - 1])
            mixed = _fmix32(hashes[start:stop])
            permuted = np.multiply.outer(self.a, mixed)  # uint32 arithmetic wraps: that is the mod 2^32
            permuted += self.b[:, None]
            offsets = np.concatenate(([0], ends[start_text : stop_text - 1] - start))
            out[start_text:stop_text] = np.minimum.reduceat(permuted, offsets, axis=1).T
            start_text, start = stop_text, stop
        return out


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (a bijection that spreads structured inputs)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


FP_WEIGHT, FN_WEIGHT = 0.05, 0.95
"""How (bands, rows) trade false positives for false negatives. Candidates are verified with the exact
Jaccard similarity, so a false positive costs one comparison while a false negative is a duplicate kept:
weigh misses heavily (at threshold 0.8 this finds pairs at similarity 0.85 with probability 0.99, where
datasketch's equal weights find them with 0.69)."""


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the weighted false-positive plus false-negative area around
    `threshold`, computed as datasketch's MinHashLSH does."""
    s = np.linspace(0.0, 1.0, 2001)
    best, best_error = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1 - (1 - s**r) ** b
            fp = np.trapezoid(np.where(s <= threshold, p, 0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1 - p, 0), s)
            error = FP_WEIGHT * fp + FN_WEIGHT * fn
            if error < best_error:
                best, best_error = (b, r), error
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) int64 keys: rows that agree on all `rows` values of a band share that band's key."""
    n = len(signatures)
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            k = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
            for j in range(band * rows, (band + 1) * rows):
                k = (k ^ signatures[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
            keys[:, band] = k
    return keys.view(np.int64)


def exact_duplicates(hashes: np.ndarray) -> dict[int, int]:
    """{index: index of its first occurrence} for every row whose hash appeared before."""
    return {j: int(group[0]) for group in shared_groups(hashes) for j in group[1:].tolist()}


class UnionFind:
    """Clusters of row indices; a cluster's root is its smallest index (the first row seen, which is kept)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        root = i
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while i != root:  # path compression
            self.parent[i], i = root, self.parent.get(i, i)
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def sharing(keys: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    """Indices of the rows not marked in `skip` whose key another row holds too, ordered by key and then by
    index. Keys are sorted once (a vectorised sort, ~20x faster than an argsort) to find the repeated ones; only
    the rows holding one (`holding`), usually few, are argsorted."""
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    rows = holding(keys, repeated)
    if skip is not None:
        rows = rows[~skip[rows]]
    return rows[np.argsort(keys[rows], kind="stable")]


def holding(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the `keys` that are among the sorted int64 `values`. A bitmap of the values' low
    bits rules out most keys with one vectorised lookup; only the rest are binary-searched."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    low = np.int64((1 << max(16, min(26, 2 * len(values).bit_length()))) - 1)
    bitmap = np.zeros(int(low) + 1, dtype=bool)
    bitmap[values & low] = True
    rows = np.flatnonzero(bitmap[keys & low])
    held = keys[rows]
    return rows[values[np.minimum(np.searchsorted(values, held), len(values) - 1)] == held]


def shared_groups(keys: np.ndarray) -> Iterator[np.ndarray]:
    """Indices of rows sharing a key, one array per key held by two or more rows (ascending indices)."""
    order = sharing(keys)
    same = keys[order[1:]] == keys[order[:-1]]  # same[p]: sorted rows p and p+1 share a key
    pos = np.flatnonzero(same)
    if not len(pos):
        return
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1  # runs of consecutive positions form one group
    for run in np.split(pos, breaks):
        yield order[run[0] : run[-1] + 2]


def candidate_pairs(keys: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    """Pairs of rows that share a key, to verify, as sorted int64 codes `first << 32 | second` (first <
    second): each row of a group with the group's first row and with the row before it (ascending indices),
    rows marked in `skip` left out. Linking each row to those two finds a group's clusters without comparing
    every pair of its rows."""
    order = sharing(keys, skip)
    ordered = keys[order]
    follows = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # sorted positions that share the key before them
    if not len(follows):
        return np.zeros(0, dtype=np.int64)
    is_start = np.ones(len(order), dtype=bool)
    is_start[follows] = False
    group_start = np.maximum.accumulate(np.where(is_start, np.arange(len(order)), 0))[follows]
    second = order[follows].astype(np.int64)
    firsts = order[group_start].astype(np.int64)
    previous = order[follows - 1].astype(np.int64)
    not_first = follows - 1 != group_start
    codes = np.concatenate([(firsts << 32) | second, (previous[not_first] << 32) | second[not_first]])
    return distinct(codes)


def verified_pairs(
    codes: np.ndarray,
    similarities: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threshold: float,
    batch: int = 16_384,
) -> Iterator[tuple[int, int, float]]:
    """(first, second, similarity) of the pair codes (`first << 32 | second`, in their order) whose exact
    similarity reaches `threshold`, verified `batch` pairs at a time."""
    for start in range(0, len(codes), batch):
        chunk = codes[start : start + batch]
        first, second = chunk >> 32, chunk & 0xFFFFFFFF
        sims = similarities(first, second)
        yield from zip(*(x[sims >= threshold].tolist() for x in (first, second, sims)), strict=True)


def near_duplicates(
    band_columns: Callable[[int], np.ndarray],
    bands: int,
    similarities: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threshold: float,
    *,
    skip: set[int] | None = None,
    batch: int = 16_384,
) -> dict[int, tuple[int, float]]:
    """{index: (index of the kept row of its cluster, its highest similarity to a row it matched)} for near
    duplicates: rows linked by verified candidate pairs form a cluster (single linkage), and its first row is
    kept.

    `band_columns(b)` returns band b's keys for all rows (read one band at a time, so the keys of every band
    never have to be in memory together). The candidate pairs of all bands are gathered first (8 bytes a
    pair), then verified `batch` pairs at a time by `similarities(first, second)`, which returns the exact
    similarity of each pair. `skip` holds rows already removed (exact duplicates).
    """
    codes, mask = np.zeros(0, dtype=np.int64), None
    for band in range(bands):
        keys = band_columns(band)
        if skip and mask is None:
            mask = np.zeros(len(keys), dtype=bool)
            mask[list(skip)] = True
        codes = distinct(np.concatenate([codes, candidate_pairs(keys, mask)]))
        del keys
    uf = UnionFind()
    matched: dict[int, float] = {}
    for i, j, sim in verified_pairs(codes, similarities, threshold, batch):
        uf.union(i, j)
        matched[i] = max(matched.get(i, 0.0), sim)
        matched[j] = max(matched.get(j, 0.0), sim)
    out: dict[int, tuple[int, float]] = {}
    for i in matched:
        root = uf.find(i)
        if root != i:
            out[i] = (root, matched[i])
    return out
