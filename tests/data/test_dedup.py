"""MinHash against datasketch, and duplicate counts on hand-built fixtures with known duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.data.dedup import (
    FN_WEIGHT,
    FP_WEIGHT,
    MinHasher,
    band_keys,
    exact_duplicates,
    jaccard,
    near_duplicates,
    optimal_bands,
    shingle_batch,
    shingles,
)

BASE = "The committee approved the new budget for the public library after a long debate on Tuesday evening."
TEXTS = [
    BASE,
    "A completely different sentence about cooking pasta with garlic, olive oil and fresh basil leaves.",
    BASE.replace("Tuesday", "Monday"),  # one word changed: a near duplicate of 0
    "the committee approved the NEW budget for the public library, after a long debate on tuesday evening",  # case
    "Stock markets fell sharply on Friday as investors worried about rising interest rates worldwide.",
    BASE[:40],  # a prefix: similar start, but far below the threshold
]


def test_signatures_match_datasketch() -> None:
    datasketch = pytest.importorskip("datasketch")
    from datasketch.lsh import _optimal_param

    hasher = MinHasher(num_perm=64, ngram=5, seed=3)
    hashes, counts = shingle_batch(TEXTS, 5)
    ours = hasher.signatures(hashes, counts, budget=50)  # a small budget also checks the chunking
    for text, sig in zip(TEXTS, ours, strict=True):
        ref = datasketch.MinHash(num_perm=64, seed=3, hashfunc=lambda x: x)
        ref.update_batch(shingles(text, 5))
        assert np.array_equal(sig, ref.hashvalues)
    for threshold in (0.5, 0.8, 0.9):
        assert optimal_bands(threshold, 128) == _optimal_param(threshold, 128, FP_WEIGHT, FN_WEIGHT)


def test_shingles_and_exact_jaccard() -> None:
    a, b = shingles("abcdef", 3), shingles("abcdeg", 3)
    assert len(a) == 4 and jaccard(a, b) == 3 / 5  # abc bcd cde shared; def vs deg differ
    assert len(shingles("ab", 5)) == 1 and len(shingles("", 5)) == 1


def test_exact_duplicates_point_at_the_first_occurrence() -> None:
    assert exact_duplicates(np.array([7, 3, 7, 3, 7, 1])) == {2: 0, 3: 1, 4: 0}
    assert exact_duplicates(np.array([1, 2, 3])) == {}


def test_near_duplicates_on_a_known_fixture() -> None:
    from tunelab.data.dedup import near_text
    from tunelab.data.records import Example

    normal = [near_text(Example(kind="text", text=t)) for t in TEXTS]
    sets = [shingles(t, 5) for t in normal]
    assert jaccard(sets[0], sets[2]) > 0.8 and jaccard(sets[0], sets[3]) == 1.0 and jaccard(sets[0], sets[5]) < 0.5
    bands, rows = optimal_bands(0.8, 128)
    hashes, counts = shingle_batch(normal, 5)
    keys = band_keys(MinHasher(128, 5).signatures(hashes, counts), bands, rows)
    found = near_duplicates(lambda b: keys[:, b], bands, lambda i, j: jaccard(sets[i], sets[j]), 0.8)
    assert set(found) == {2, 3} and found[2][0] == 0 and found[3] == (0, 1.0)
