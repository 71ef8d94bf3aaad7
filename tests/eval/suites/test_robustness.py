"""The robustness suite's scoring on stand-in models whose answers are known: each perturbation's change from clean
and its McNemar test checked by hand, base against tuned, rows over the context and failed rows noted, and a
saved suite that reads back and refuses other data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tunelab.core.errors import DataError
from tunelab.eval.metrics import exact_match
from tunelab.eval.suites.robustness import RobustnessSuite, build_suite, run_robustness
from tunelab.eval.suites.subjects import Row


class Fragile:
    """Right on a row's own text, wrong on any changed text (or always right when `sturdy`)."""

    def __init__(self, name: str, sturdy: bool = False, limit: int = 60) -> None:
        self.name, self.sturdy, self.limit = name, sturdy, limit

    def answers(self, rows: list[Row], texts: list[str]) -> list[str]:
        return [r.reference if self.sturdy or t == r.text else "wrong" for r, t in zip(rows, texts, strict=True)]

    def too_long(self, row: Row, text: str) -> str | None:
        return f"{self.name}: too long" if len(text) > self.limit else None


def lengthen_sevens(text: str, rng: random.Random) -> str:
    if "7" in text:
        return text + " and more" * 10
    if "3" in text:
        raise ValueError("no threes")
    return text + "."


ROWS = [Row(f"d.jsonl:{i}", f"question number {i}?", f"answer {i}") for i in range(10)]
CUSTOM = "tests.eval.suites.test_robustness:lengthen_sevens"


def test_change_from_clean_and_its_test_by_hand() -> None:
    suite = build_suite(ROWS, ["case", CUSTOM], seed=0)
    result = run_robustness([Fragile("base"), Fragile("tuned", sturdy=True)], ROWS, suite, exact_match, "em")
    out = result.to_dict()
    assert out["clean"]["base"]["estimate"] == 1.0 and out["models"] == ["base", "tuned"]
    case = next(p for p in out["perturbations"] if p["name"] == "case")
    k = sum(r.perturbed["case"] != r.clean for r in suite.rows)
    assert case["changed"] == k and 0 < k < 10 and case["scored"] == 10
    base = case["models"]["base"]["change"]
    assert base["delta"]["estimate"] == pytest.approx(-k / 10)
    assert base["discordant"] == [k, 0] and base["p_value"] == pytest.approx(min(1.0, 2 * 0.5**k))
    assert case["models"]["tuned"]["change"]["p_value"] == 1.0
    assert case["change_difference"]["delta"]["estimate"] == pytest.approx(k / 10)
    custom = next(p for p in out["perturbations"] if p["name"] == CUSTOM)
    # Row 3 failed, row 7 went over the context: 8 rows compared, every one changed (a full stop added).
    assert (custom["failed"], custom["scored"]) == (1, 8)
    assert custom["models"]["base"]["change"]["discordant"] == [8, 0]
    assert custom["models"]["base"]["change"]["p_value"] == pytest.approx(2 * 0.5**8)
    notes = {(n["row"], n["perturbation"]): n["note"] for n in out["notes"]}
    assert notes == {
        (3, CUSTOM): "perturbation failed: ValueError: no threes",
        (7, CUSTOM): "base: too long; tuned: too long",
    }
    assert custom["models"]["base"]["change"]["p_holm"] >= custom["models"]["base"]["change"]["p_value"]
    for change in (p["models"][m]["change"] for p in out["perturbations"] for m in p["models"]):
        # The verdict every table marks is the adjusted one: significant only when the Holm p is under alpha.
        assert change["significant"] == (change["significant_unadjusted"] and change["p_holm"] < change["alpha"])
    raw = custom["models"]["base"]["change"]  # p = 0.0078 raw; Holm over the perturbations keeps it significant
    assert raw["significant_unadjusted"] and raw["significant"] == (raw["p_holm"] < 0.05)
    assert len(result.predictions) == 10 + 10 + 8


def test_saved_suite_reads_back_and_refuses_other_data(tmp_path: Path) -> None:
    suite = build_suite(ROWS, ["typos", "distractor"], seed=3, typo_rate=0.2)
    path = suite.save(tmp_path / "suite.jsonl")
    again = RobustnessSuite.load(path)
    assert again == suite
    again.check_matches(ROWS, path)
    other = [*ROWS[:9], Row("d.jsonl:9", "a different question?", "x")]
    with pytest.raises(DataError, match=r"first difference: d\.jsonl:9"):
        again.check_matches(other, path)
    (tmp_path / "junk.jsonl").write_text('{"rows": 1}\n')
    with pytest.raises(DataError, match="not a robustness suite file"):
        RobustnessSuite.load(tmp_path / "junk.jsonl")
