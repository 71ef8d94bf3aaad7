"""Perturbations: each kind's exact output for a seed, what each may and may not change, determinism, custom
perturbations by name and import path, and failures noted per row."""

from __future__ import annotations

import random
import string

import pytest

from tunelab.core.errors import ConfigError
from tunelab.eval.suites.perturb import (
    DISTRACTORS,
    PERTURBATIONS,
    TEMPLATES,
    apply,
    register_perturbation,
    resolve,
    row_rng,
    typos,
)
from tunelab.eval.suites.robustness import build_suite
from tunelab.eval.suites.subjects import Row

TEXT = "The meeting is on March 5, 2021. What day is it?"

EXPECTED = {
    "typos": "The meting si on March 5, 2021. What day is it?",
    "case": "the meeting is on march 5, 2021. what day is it?",
    "whitespace": "\nThe meeting   is on March 5, 2021. What day is it? ",
    "punctuation": "The meeting is on March 5 2021 What day is it?",
    "template": "Could you tell me? The meeting is on March 5, 2021. What day is it?",
    "distractor": "This message was sent from a phone. The meeting is on March 5, 2021. What day is it?",
}


def shout(text: str, rng: random.Random) -> str:
    """A custom perturbation, imported by the suite as tests.eval.suites.test_perturb:shout."""
    return text.upper() + "!" * rng.randint(1, 3)


def fails_on_questions(text: str, rng: random.Random) -> str:
    if "?" in text:
        raise RuntimeError("cannot handle questions")
    return text + " ok"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_kind_gives_its_exact_output_for_the_seed(name: str) -> None:
    assert apply(resolve(name, typo_rate=0.1), TEXT, row_rng(0, name, 0)) == EXPECTED[name]
    again = apply(resolve(name, typo_rate=0.1), TEXT, row_rng(0, name, 0))
    assert again == EXPECTED[name]


def test_each_kind_changes_only_what_it_says() -> None:
    for seed in range(20):

        def rng(name: str, seed: int = seed) -> random.Random:
            return row_rng(seed, name, 3)

        assert resolve("case")(TEXT, rng("case")).lower() == TEXT.lower()
        assert resolve("whitespace")(TEXT, rng("whitespace")).split() == TEXT.split()
        kept = resolve("punctuation")(TEXT, rng("punctuation"))
        assert [c for c in kept if c not in string.punctuation] == [c for c in TEXT if c not in string.punctuation]
        assert any(resolve("template")(TEXT, rng("template")) == t.format(text=TEXT) for t in TEMPLATES)
        assert any(
            resolve("distractor")(TEXT, rng("distractor")) in (f"{d} {TEXT}", f"{TEXT} {d}") for d in DISTRACTORS
        )


def test_typo_rate_sets_how_many_letters_change() -> None:
    assert typos("abcd", random.Random(0), rate=1.0) != "abcd"
    text = "lorem ipsum dolor sit amet " * 40
    changed = [sum(a != b for a, b in zip(text, typos(text, random.Random(s), rate=r), strict=False)) for s, r in
               ((1, 0.01), (1, 0.2))]  # fmt: skip
    assert changed[0] < changed[1]
    with pytest.raises(ConfigError, match="--typo-rate"):
        resolve("typos", typo_rate=0)


def test_suite_is_identical_for_a_seed_and_a_text_does_not_depend_on_other_rows_or_kinds() -> None:
    rows = [Row(f"f:{i}", f"what is color of {w} today?", "red") for i, w in enumerate(["cat", "dog", "sky"])]
    names = list(PERTURBATIONS)
    first, second = build_suite(rows, names, seed=7), build_suite(rows, names, seed=7)
    assert first == second
    assert build_suite(rows[:2], names, seed=7).rows == first.rows[:2]
    only_case = build_suite(rows, ["case"], seed=7)
    assert [r.perturbed["case"] for r in only_case.rows] == [r.perturbed["case"] for r in first.rows]
    assert build_suite(rows, names, seed=8).rows != first.rows


def test_custom_perturbation_by_import_path_and_by_registered_name() -> None:
    fn = resolve("tests.eval.suites.test_perturb:shout")
    assert fn("hi", random.Random(0)).startswith("HI!")
    register_perturbation("shout_test", shout)
    assert resolve("shout_test") is shout
    with pytest.raises(ValueError, match="registered twice"):
        register_perturbation("shout_test", shout)
    with pytest.raises(ConfigError, match="Did you mean 'typos'"):
        resolve("typo")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        resolve("tests.eval.suites.test_perturb:nope")
    with pytest.raises(ConfigError, match="cannot import module"):
        resolve("no_such_module_xyz:f")


def test_a_failing_perturbation_is_noted_per_row_and_the_rest_go_on() -> None:
    rows = [Row("f:1", "what is it?", "a"), Row("f:2", "tell me", "b")]
    suite = build_suite(rows, ["tests.eval.suites.test_perturb:fails_on_questions", "case"], seed=0)
    name = "tests.eval.suites.test_perturb:fails_on_questions"
    assert suite.rows[0].failed == {name: "RuntimeError: cannot handle questions"}
    assert suite.rows[1].perturbed[name] == "tell me ok"
    assert set(suite.rows[0].perturbed) == {"case"}
