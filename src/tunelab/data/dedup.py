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
    text = example.content()
    return _NON_WORD.sub(" ", (text if text.isascii() else unicodedata.normalize("NFKC", text)).lower()).strip()


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


def shingles(text: str, ngram: int) -> np.ndarray:
    """The sorted unique shingle hashes of one text (for exact Jaccard similarity)."""
    return np.unique(shingle_batch([text], ngram)[0])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique shingle arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter) if len(a) + len(b) else 1.0


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


def shared_groups(keys: np.ndarray) -> Iterator[np.ndarray]:
    """Indices of rows sharing a key, one array per key held by two or more rows (ascending indices). Only
    the sort order and one flag per row are held (17 bytes a row); the groups themselves are small."""
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]  # same[p]: sorted rows p and p+1 share a key
    pos = np.flatnonzero(same)
    if not len(pos):
        return
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1  # runs of consecutive positions form one group
    for run in np.split(pos, breaks):
        yield order[run[0] : run[-1] + 2]


def near_duplicates(
    band_columns: Callable[[int], np.ndarray],
    bands: int,
    similarity: Callable[[int, int], float],
    threshold: float,
    *,
    skip: set[int] | None = None,
    pair_ok: Callable[[int, int], bool] | None = None,
) -> dict[int, tuple[int, float]]:
    """{index: (index of the kept row of its cluster, similarity to the row it matched)} for near duplicates.

    `band_columns(b)` returns band b's keys for all rows (read one band at a time, so the keys of every band
    never have to be in memory together). `skip` holds rows already removed (exact duplicates); `pair_ok`
    restricts which candidate pairs count (for contamination: only pairs across train and validation).
    """
    skip = skip or set()
    uf = UnionFind()
    matched: dict[int, float] = {}
    for band in range(bands):
        for group in shared_groups(band_columns(band)):
            members = [i for i in group.tolist() if i not in skip]
            for k, m in enumerate(members[1:], start=1):
                for other in (members[0], members[k - 1]) if k > 1 else (members[0],):
                    if uf.find(m) == uf.find(other) or (pair_ok is not None and not pair_ok(other, m)):
                        continue
                    sim = similarity(other, m)
                    if sim >= threshold:
                        uf.union(other, m)
                        matched[m] = max(matched.get(m, 0.0), sim)
                        matched[other] = max(matched.get(other, 0.0), sim)
                        break
    out: dict[int, tuple[int, float]] = {}
    for i in matched:
        root = uf.find(i)
        if root != i:
            out[i] = (root, matched[i])
    return out
