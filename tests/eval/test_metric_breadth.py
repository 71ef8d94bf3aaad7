"""chrF, ROUGE-1/2/L, structured answers, label metrics, calibration and embedding similarity on hand-made examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import CHRF
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tunelab.core.errors import ConfigError
from tunelab.eval.calibration import expected_calibration_error, reliability, reliability_diagram
from tunelab.eval.evaluate import answer_scores, generated_labels
from tunelab.eval.labels import OTHER, is_label_task, label_report
from tunelab.eval.metrics import chrf, chrf_from_stats, chrf_stats, rouge_scores
from tunelab.eval.similarity import embedding_similarity
from tunelab.eval.structured import load_schema, same_shape, structured_scores


def test_chrf_equals_sacrebleu_corpus_and_sentence_scores() -> None:
    preds = ["the cat sat on the mat", "2021-03-05", "completely different"]
    refs = ["the cat sat on a mat", "2021-03-06", "the answer is here"]
    assert chrf(preds, refs) == pytest.approx(CHRF().corpus_score(preds, [refs]).score / 100)
    for p, r in zip(preds, refs, strict=True):
        assert chrf_from_stats(chrf_stats(p, r)) == pytest.approx(CHRF().sentence_score(p, [r]).score / 100)
    assert chrf(["same words"], ["same words"]) == pytest.approx(1.0)


def test_rouge_1_2_l_hand_computed_on_whitespace_tokens() -> None:
    scores = rouge_scores("a b c d", "a c e")
    # Unigrams: 2 shared of 4 predicted and 3 reference -> P 1/2, R 2/3, F 4/7. No shared bigram. LCS "a c": 4/7.
    assert scores == pytest.approx({"rouge_1": 4 / 7, "rouge_2": 0.0, "rouge_l": 4 / 7})
    # Bigrams: "the cat", "cat sat" shared of 2 predicted and 5 reference -> P 1, R 2/5, F 4/7.
    assert rouge_scores("the cat sat", "the cat sat on the mat")["rouge_2"] == pytest.approx(4 / 7)
    # Case and punctuation are kept (rouge-score's own tokenizer would make these equal).
    assert rouge_scores("2021-03-05", "2021 03 05")["rouge_1"] == 0.0
    assert rouge_scores("Paris", "paris")["rouge_l"] == 0.0
    assert rouge_scores("", "") == {"rouge_1": 1.0, "rouge_2": 1.0, "rouge_l": 1.0}


def test_structured_answers_parse_match_shape_and_schema(tmp_path: Path) -> None:
    ref = '{"name": "Ada", "age": 36, "tags": ["x"], "boss": null}'
    assert structured_scores('{"name": "Bob", "age": 40.5, "tags": [], "boss": null}', ref) == {
        "json_valid": 1.0, "json_match": 1.0}  # fmt: skip
    assert structured_scores('{"name": "Bob", "age": "40", "tags": [], "boss": null}', ref)["json_match"] == 0.0
    assert structured_scores('{"name": "Bob", "tags": [], "boss": null}', ref)["json_match"] == 0.0  # key missing
    assert structured_scores('{"name": "Bob", "age": 1, "tags": [', ref) == {"json_valid": 0.0, "json_match": 0.0}
    assert structured_scores("42", "42") == {}  # a bare number is an answer, not a structure
    assert same_shape([{"a": 1}, {"a": 2}], [{"a": 0}]) and not same_shape([{"a": 1}, {"b": 2}], [{"a": 0}])
    assert not same_shape(True, 1)  # a boolean is not a number
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}))
    validator = load_schema(schema)
    assert structured_scores('{"name": "B", "age": -1, "tags": [], "boss": null}', ref, validator)["json_schema"] == 0
    assert structured_scores('{"name": "B", "age": 3, "tags": [], "boss": null}', ref, validator)["json_schema"] == 1
    schema.write_text('{"type": "objekt"}')
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        load_schema(schema)


def test_generation_scores_add_structure_metrics_when_every_reference_is_json() -> None:
    rows = [{"reference": '{"a": 1}', "prediction": '{"a": 2}'}, {"reference": '{"a": 1}', "prediction": "a: 1"}]
    metrics = answer_scores(rows)
    assert metrics["json_valid"] == 0.5 and metrics["json_match"] == 0.5 and rows[1]["json_valid"] == 0.0
    assert "json_valid" not in answer_scores([{"reference": "plain", "prediction": "plain"}])


def test_confusion_matrix_counts_and_scores_match_scikit_learn() -> None:
    gold = ["cat", "cat", "cat", "dog", "dog", "bird", "bird", "bird"]
    pred = ["cat", "dog", "cat", "dog", "cat", "bird", "cat", "Bird."]  # the last is outside the label set
    report = label_report(gold, pred)
    assert report.labels == ["bird", "cat", "dog"]
    # rows gold bird/cat/dog, columns predicted bird/cat/dog/(other)
    assert report.matrix.tolist() == [[1, 1, 0, 1], [0, 2, 1, 0], [0, 1, 1, 0]]
    names = [*report.labels, OTHER]
    expected = confusion_matrix(gold, [p if p in report.labels else OTHER for p in pred], labels=names)
    assert report.matrix.tolist() == expected[:3].tolist()
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=report.labels, average="macro", zero_division=0)
    assert report.metrics == pytest.approx({"macro_precision": p, "macro_recall": r, "macro_f1": f})
    document = report.to_dict()
    assert document["per_class"]["bird"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    assert document["columns"][-1] == OTHER


def test_generated_answers_are_read_as_labels_only_when_references_repeat() -> None:
    assert is_label_task(["pos", "neg", "pos", "neg"]) and not is_label_task(["a", "b", "c"])
    assert not is_label_task(["only"] * 5)  # one label: nothing to confuse
    pairs = [("pos", "pos"), ("neg", "pos"), ("neg", "neg"), ("pos", "x")]
    rows = [{"reference": r, "prediction": p} for r, p in pairs]
    report = generated_labels(rows)
    assert report is not None and report.matrix.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_expected_calibration_error_by_hand(tmp_path: Path) -> None:
    confidence = np.array([0.95, 0.95, 0.92, 0.65, 0.62, 0.15])
    correct = np.array([1, 1, 0, 1, 0, 0])
    # Bins (0.9, 1]: 3 rows, confidence 0.94, accuracy 2/3; (0.6, 0.7]: 2 rows, 0.635, 1/2; (0.1, 0.2]: 1 row,
    # 0.15, 0. ECE = 3/6 |2/3 - 0.94| + 2/6 |0.5 - 0.635| + 1/6 |0 - 0.15|.
    expected = 0.5 * abs(2 / 3 - 0.94) + abs(0.5 - 0.635) / 3 + 0.15 / 6
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    table = reliability(confidence, correct)
    assert table.counts.tolist() == [0, 1, 0, 0, 0, 0, 2, 0, 0, 3]
    assert table.to_dict()["accuracy"][0] is None  # an empty bin
    assert expected_calibration_error(np.array([1.0, 0.5]), np.array([1, 0])) == pytest.approx(0.25)
    png = reliability_diagram(table, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embedding_similarity_with_the_embedded_encoder() -> None:
    scores = embedding_similarity(
        ["The meeting is on Monday.", "The meeting is on Monday.", "Bananas are yellow."],
        ["The meeting is on Monday.", "We meet on Monday.", "The meeting is on Monday."],
    )
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert scores[0] > scores[1] > scores[2]  # a paraphrase is closer than an unrelated sentence
    assert embedding_similarity([], []) == []
