"""MinHash against datasketch, and duplicate counts on hand-built fixtures with known duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.data.dedup import (
    FN_WEIGHT,
    FP_WEIGHT,
    MinHasher,
    ShingleSets,
    band_keys,
    candidate_pairs,
    exact_duplicates,
    near_duplicates,
    optimal_bands,
    shingle_batch,
)


def shingles(text: str, ngram: int) -> np.ndarray:
    """The reference: one text's sorted unique shingle hashes."""
    return np.unique(shingle_batch([text], ngram)[0])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The reference: Jaccard similarity of two sorted unique shingle arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter) if len(a) + len(b) else 1.0


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
    sets = ShingleSets(["abcdef", "abcdeg", "ab", ""], 3)
    assert sets.lengths.tolist() == [4, 4, 1, 1]  # a text shorter than the n-gram is one shingle
    assert sets.jaccard(np.array([0, 2]), np.array([1, 2])).tolist() == [3 / 5, 1.0]  # abc bcd cde shared


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
    found = near_duplicates(lambda b: keys[:, b], bands, ShingleSets(normal, 5).jaccard, 0.8)
    assert set(found) == {2, 3} and found[2][0] == 0 and found[3] == (0, 1.0)


def test_batched_jaccard_equals_the_pairwise_one(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "η"]
    texts = ["", "ab", "abcde"] + [" ".join(rng.choice(words, rng.integers(1, 40))) for _ in range(60)]
    sets = ShingleSets(texts, 5)
    a, b = rng.integers(0, len(texts), 500), rng.integers(0, len(texts), 500)
    monkeypatch.setattr(ShingleSets, "BUDGET", 64)  # many small sorts: the budget splitting is checked too
    got = sets.jaccard(a, b)
    want = [jaccard(shingles(texts[i], 5), shingles(texts[j], 5)) for i, j in zip(a, b, strict=True)]
    assert np.allclose(got, want)


def test_candidate_pairs_link_each_row_to_its_groups_first_and_previous_row() -> None:
    keys = np.array([5, 9, 5, 5, 9, 1, 5])
    codes = candidate_pairs(keys)
    pairs = {(int(c) >> 32, int(c) & 0xFFFFFFFF) for c in codes}
    assert pairs == {(0, 2), (0, 3), (2, 3), (0, 6), (3, 6), (1, 4)}
    skip = np.zeros(len(keys), dtype=bool)
    skip[[0, 4]] = True
    pairs = {(int(c) >> 32, int(c) & 0xFFFFFFFF) for c in candidate_pairs(keys, skip)}
    assert pairs == {(2, 3), (2, 6), (3, 6)}
    assert len(candidate_pairs(np.array([1, 2, 3]))) == 0


def test_near_duplicate_clusters_follow_chains_and_keep_the_first_row() -> None:
    # 0~1 and 1~2 are similar, 0 and 2 are not: single linkage puts all three in 0's cluster
    keys = np.array([[1, 7], [1, 2], [3, 2], [4, 5]])
    sims = {(0, 1): 0.9, (1, 2): 0.85, (0, 2): 0.1}

    def similarities(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return np.array([sims.get(pair, 0.0) for pair in zip(first.tolist(), second.tolist(), strict=True)])

    found = near_duplicates(lambda b: keys[:, b], 2, similarities, 0.8)
    assert found == {1: (0, 0.9), 2: (0, 0.85)}
