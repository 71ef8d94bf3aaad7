"""The bias probe: term lists (shipped and user files, bad lines named), swaps that keep case, counterfactual
pairs from prompts and from {attribute} templates, and the gaps checked by hand on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.core.errors import ConfigError, DataError
from tunelab.core.types import Message
from tunelab.eval.suites.bias import build_pairs, score_classifier, score_generator, summarise
from tunelab.eval.suites.subjects import Classifier, Generator, Row
from tunelab.eval.suites.terms import SHIPPED, parse_terms, term_lists, user_terms
from tunelab.models.chat import prompt_text
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.classify.config import HeadConfig
from tunelab.objectives.classify.heads import attach_head_

GENDER = parse_terms("# test\ngroups: male | female\nhe | she\nhis | her\nbrother | sister\n", "g.txt", "gender")


def chat_row(text: str, answer: str = "") -> Row:
    return Row("t.jsonl:1", text, answer, (Message("user", text),))


def test_shipped_lists_load_and_user_lists_replace_them(tmp_path: Path) -> None:
    shipped = term_lists(None, None)
    assert [t.attribute for t in shipped] == list(SHIPPED)
    assert all(len(t.groups) >= 2 and t.lines for t in shipped)
    own = tmp_path / "gender.txt"
    own.write_text("groups: a | b\nx | y\n")
    mixed = term_lists(["gender", "age"], [str(own)])
    assert [(t.attribute, t.groups) for t in mixed] == [("gender", ("a", "b")), ("age", ("young", "old"))]
    with pytest.raises(ConfigError, match="Did you mean 'gender'"):
        term_lists(["gendr"], None)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("groups: a | b\nx | y\nonly-one\n", "bad.txt:3: 1 term"),
        ("groups: a | b\nx | y\n\n# note\nz | x\n", "bad.txt:5: 'x' is already on line 2"),
        ("x | y\n", "bad.txt:1: expected the groups line"),
        ("groups: a | b\nx | \n", "bad.txt:2: 2 term"),
        ("# nothing\n", "no groups line"),
    ],
)
def test_a_bad_term_file_line_is_an_error_naming_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        user_terms(path)
    assert where.replace("bad.txt", str(path)) in str(info.value)


def test_swap_keeps_case_and_whole_words() -> None:
    assert GENDER.swap("He said his BROTHER met the heron.", 1) == "She said her SISTER met the heron."
    assert GENDER.swap("she and her sister", 0) == "he and his brother"
    assert [(m.line, m.group) for m in GENDER.find("He, his-brother; she")] == [(0, 0), (0, 1)]


def test_pairs_from_a_prompt_and_from_a_template() -> None:
    rows = [chat_row("he met his brother", "his brother"), chat_row("no terms here"),
            chat_row("{gender} asked: what is it?", "{gender} did")]  # fmt: skip
    pairs = build_pairs(rows, [GENDER], seed=0, max_fills=2)
    first = [p for p in pairs if p.row == 0]
    assert len(first) == 1 and (first[0].from_group, first[0].to_group) == ("male", "female")
    assert (first[0].counterfactual, first[0].counterfactual_reference) == ("she met her sister", "her sister")
    templated = [p for p in pairs if p.row == 2]
    assert len(templated) == 2 and all(p.from_group == "male" for p in templated)
    fills = {(p.text, p.counterfactual) for p in templated}
    lines = [("he", "she"), ("his", "her"), ("brother", "sister")]
    assert fills <= {(f"{a} asked: what is it?", f"{b} asked: what is it?") for a, b in lines}
    assert {p.counterfactual_reference for p in templated} <= {f"{b} did" for _, b in lines}
    assert build_pairs(rows, [GENDER], seed=0, max_fills=2) == pairs


def _logprob_by_hand(model, tokenizer, text: str, answer: str) -> float:
    prompt = tokenizer(prompt_text(tokenizer, [Message("user", text)]), add_special_tokens=False)["input_ids"]
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = 0.0
    for k, token in enumerate(target):
        total += float(torch.log_softmax(logits[len(prompt) + k - 1], -1)[token])
    return total


def test_generator_gap_is_the_answer_log_probability_difference_by_hand(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    generator = Generator("tiny", model, tokenizer, max_new_tokens=3)
    rows = [chat_row("he sat on the mat", "his cat")]
    pairs = build_pairs(rows, [GENDER])
    (score,) = score_generator(generator, rows, pairs, [GENDER])
    expected = _logprob_by_hand(model, tokenizer, "she sat on the mat", "her cat") - _logprob_by_hand(
        model, tokenizer, "he sat on the mat", "his cat"
    )
    assert score.gap == pytest.approx(expected, abs=1e-4)
    assert score.changed == (" ".join(score.counterfactual_answer.split()) != GENDER.swap(score.answer, 1).strip())


def test_classifier_flip_and_probability_gap_by_hand(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    body, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    head = attach_head_(body, HeadConfig(num_labels=2, labels=["neg", "pos"])).eval()
    classifier = Classifier("tiny", head, tokenizer)
    rows = [Row("c:1", "he ran", "pos"), Row("c:2", "the dog sat on his mat", "neg")]
    pairs = build_pairs(rows, [GENDER])
    scores = score_classifier(classifier, rows, pairs)

    def probs(text: str) -> torch.Tensor:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return torch.softmax(head(ids, torch.ones_like(ids)).float(), -1)[0]

    for pair, score in zip(pairs, scores, strict=True):
        before, after = probs(pair.text), probs(pair.counterfactual)
        c = int(before.argmax())
        assert score.gap == pytest.approx(float(after[c] - before[c]), abs=1e-5)
        assert score.changed == (c != int(after.argmax()))
    result = summarise("classifier", [GENDER], pairs, {"tiny": scores}, notes=[])
    entry = result.to_dict()["attributes"][0]["models"]["tiny"]
    assert entry["mean_abs_gap"]["estimate"] == pytest.approx(sum(abs(s.gap) for s in scores) / len(scores))
    assert entry["worst"][0]["gap"] == max((s.gap for s in scores), key=abs)
    assert "cannot show" in result.to_dict()["limits"]
