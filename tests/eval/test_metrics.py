"""Answer metrics against numbers worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from tunelab.eval.metrics import aggregate, bleu, exact_match, normalize_answer, rouge_l, token_f1


def test_normalize_collapses_whitespace_only() -> None:
    assert normalize_answer("  2021-03-05 \n") == "2021-03-05"
    assert normalize_answer("a \t b\n\nc") == "a b c"
    # Case, punctuation and articles are kept: formatted answers must match exactly.
    assert normalize_answer(" The Answer: {'a': 1}. ") == "The Answer: {'a': 1}."


def test_exact_match() -> None:
    assert exact_match(" 2021-03-05\n", "2021-03-05") == 1.0
    assert exact_match("2021-3-5", "2021-03-05") == 0.0
    assert exact_match("Paris", "paris") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_hand_computed() -> None:
    # pred: the cat sat (3 tokens); ref: the cat sat on the mat (6). Common: the, cat, sat = 3 ("the" is clipped
    # to the prediction's single copy). P = 3/3, R = 3/6, F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # Bags, not sequences: order does not matter.
    assert token_f1("sat cat the", "the cat sat") == 1.0
    assert token_f1("dog", "the cat") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0
    assert token_f1("Cat", "cat") == 0.0


def test_rouge_l_hand_computed() -> None:
    # LCS of "a b c d" and "a c e" is "a c" (2, not contiguous). P = 2/4, R = 2/3, F = 2PR/(P+R) = (2/3)/(7/6) = 4/7.
    assert rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    # "the cat was on the mat" vs "the cat sat on the mat": LCS = the cat on the mat = 5; P = R = 5/6.
    assert rouge_l("the cat was on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # Order matters, unlike token F1: LCS of "c b a" and "a b c" is 1 token; P = R = 1/3.
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("", "") == 1.0


def test_bleu_single_pair_hand_computed() -> None:
    # pred a b c d e (c=5) vs ref a b c d f g (r=6). Matches / totals: 1-gram 4/5, 2-gram 3/4 (ab bc cd),
    # 3-gram 2/3 (abc bcd), 4-gram 1/2 (abcd). Geometric mean = (4/5*3/4*2/3*1/2)^(1/4) = 0.2^0.25 = 0.66874;
    # brevity penalty exp(1 - 6/5) = 0.81873; BLEU = 0.54752.
    assert bleu(["a b c d e"], ["a b c d f g"]) == pytest.approx(0.2**0.25 * math.exp(-0.2))
    assert bleu(["a b c d e"], ["a b c d f g"]) == pytest.approx(0.54752, abs=1e-5)


def test_bleu_is_corpus_level_not_a_mean_of_sentences() -> None:
    # Counts are summed over both pairs: 1-gram (4+4)/(4+5), 2-gram (3+3)/(3+4), 3-gram (2+2)/(2+3),
    # 4-gram (1+1)/(1+2) -> product 384/945; c = 9, r = 10 -> penalty exp(1 - 10/9) = exp(-1/9).
    score = bleu(["a b c d", "a b c d e"], ["a b c d", "a b c d f g"])
    assert score == pytest.approx((384 / 945) ** 0.25 * math.exp(-1 / 9))
    assert score == pytest.approx(0.714447, abs=1e-6)
    mean_of_sentences = (1.0 + bleu(["a b c d e"], ["a b c d f g"])) / 2
    assert score != pytest.approx(mean_of_sentences)


def test_bleu_clips_repeated_ngrams() -> None:
    # pred a a b c d vs ref a b c d e: "a" occurs twice but counts once -> 1-gram 4/5 (5/5 without clipping);
    # 2-gram 3/4, 3-gram 2/3, 4-gram 1/2; equal lengths, no penalty -> 0.2^0.25.
    assert bleu(["a a b c d"], ["a b c d e"]) == pytest.approx(0.2**0.25)


def test_bleu_edge_cases() -> None:
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # No 4-gram in common (answers shorter than 4 tokens have none at all): 0 without smoothing.
    assert bleu(["the cat sat"], ["the cat sat"]) == 0.0
    assert bleu([""], ["a b c d"]) == 0.0
    # Longer predictions are not penalised by the brevity penalty, only by precision.
    assert bleu(["a b c d e"], ["a b c d"]) == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    with pytest.raises(ValueError, match="one reference per prediction"):
        bleu(["a"], ["a", "b"])


def test_aggregate_means_numeric_fields() -> None:
    rows = [
        {"origin": "f:1", "prediction": "x", "exact_match": 1.0, "token_f1": 0.5, "flag": True},
        {"origin": "f:2", "prediction": "y", "exact_match": 0.0, "token_f1": 0.25, "flag": False},
        {"origin": "f:3", "prediction": "z", "exact_match": 1.0, "token_f1": 0.0, "flag": True},
    ]
    assert aggregate(rows) == pytest.approx({"exact_match": 2 / 3, "token_f1": 0.25})
    assert aggregate([]) == {}
    # A field missing from some rows is not averaged over the rows that have it.
    assert aggregate([{"a": 1.0, "b": 2}, {"a": 0.0}]) == {"a": 0.5}
