"""`tunelab eval A B --data FILE` and `tunelab eval RUN --base`: two models on the same rows, by the real command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.helpers import tiny_config
from tests.tiny import write_color_task
from tunelab.cli.main import main
from tunelab.eval.stats import mcnemar
from tunelab.recipes.run import run_training


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny LoRA run trained on the colour task (it answers; its random base model does not)."""
    tmp = tmp_path_factory.mktemp("compare")
    cfg = tiny_config(tmp, tiny_model_dir, "method.r=4", "training.epochs=4", "eval.baseline=false",
                      "eval.generate=false")  # fmt: skip
    return run_training(cfg, console=Console(file=io.StringIO())).run_dir


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_models_are_scored_on_the_same_rows_and_compared(
    tmp_path: Path, tiny_model_dir: Path, run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_color_task(tmp_path / "test.jsonl", 12)
    common = ["--data", str(data), "--max-new-tokens", "3", "--resamples", "200"]
    assert main(["eval", str(tiny_model_dir), str(run_dir), *common, "--out", str(tmp_path / "ab")]) == 0
    printed = capsys.readouterr().out
    assert "paired" in printed and "McNemar" in printed
    document = json.loads((tmp_path / "ab" / "comparison.json").read_text())
    assert document["sources"] == [str(tiny_model_dir), str(run_dir)] and document["paired"] is True
    first, second = document["columns"]
    rows_a, rows_b = _lines(tmp_path / "ab" / "predictions_1.jsonl"), _lines(tmp_path / "ab" / "predictions_2.jsonl")
    assert len(rows_a) == len(rows_b) == document["examples"] == 12
    assert [r["origin"] for r in rows_a] == [r["origin"] for r in rows_b]
    assert sum(r["exact_match"] for r in rows_b) > sum(r["exact_match"] for r in rows_a) == 0, "the run learned"
    # The file's test is McNemar's on the rows' own exact-match scores, and its values their means.
    test = document["tests"]["exact_match"]
    expected = mcnemar([r["exact_match"] for r in rows_a], [r["exact_match"] for r in rows_b])
    assert test["test"] == expected.test and test["p_value"] == pytest.approx(expected.p_value)
    assert document["values"][second]["token_f1"] == pytest.approx(sum(r["token_f1"] for r in rows_b) / 12)
    interval = document["intervals"][first]["token_f1"]
    assert interval["low"] <= document["values"][first]["token_f1"] <= interval["high"]
    assert {"chrf", "rouge_l"} <= set(document["tests"])

    # A run against its base model is the same comparison.
    assert main(["eval", str(run_dir), "--base", *common, "--out", str(tmp_path / "base")]) == 0
    assert _lines(tmp_path / "base" / "predictions_1.jsonl") == rows_a
    assert _lines(tmp_path / "base" / "predictions_2.jsonl") == rows_b


def test_a_model_against_itself_differs_in_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "test.jsonl", 6)
    out = tmp_path / "same"
    args = ["eval", str(tiny_model_dir), str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "3"]
    assert main([*args, "--resamples", "100", "--out", str(out)]) == 0
    document = json.loads((out / "comparison.json").read_text())
    assert len(set(document["columns"])) == 2  # the same name twice is told apart
    for test in document["tests"].values():
        assert test["p_value"] == 1.0 and not test["significant"] and test["delta"]["estimate"] == 0.0


def test_one_model_gets_intervals_beside_its_predictions(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "test.jsonl", 8)
    out = tmp_path / "one.jsonl"
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "3", "--out", str(out)]) == 0
    stats = json.loads((tmp_path / "one_stats.json").read_text())
    assert stats["columns"] == [tiny_model_dir.name] and "exact_match" in stats["intervals"][tiny_model_dir.name]
    labels = json.loads((tmp_path / "one_labels.json").read_text())  # red/blue answers are labels
    assert labels["labels"] == ["blue", "red"] and sum(map(sum, labels["confusion"])) == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["{model}", "{model}", "{model}"], "compares two models"),
        (["{model}", "--base"], "one run folder"),
        (["{model}", "--confidence", "1.5"], "--confidence must be between 0 and 1"),
    ],
)
def test_comparison_mistakes_exit_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    data = write_color_task(tmp_path / "test.jsonl", 4)
    args = [a.format(model=tiny_model_dir) for a in extra]
    assert main(["eval", *args, "--data", str(data), "--max-new-tokens", "2", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_structured_answers_schema_and_similarity_through_the_command(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "json.jsonl"
    answers = [json.dumps({"name": f"n{k}", "id": k}) for k in range(4)]
    rows = [{"messages": [{"role": "user", "content": f"name {k} as JSON"}, {"role": "assistant", "content": a}]}
            for k, a in enumerate(answers)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name", "id"]}))
    out = tmp_path / "p.jsonl"
    args = ["eval", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "3", "--out", str(out)]
    assert main([*args, "--json-schema", str(schema), "--similarity"]) == 0
    scored = _lines(out)
    assert all({"json_valid", "json_match", "json_schema", "similarity"} <= set(r) for r in scored)
    assert all(r["json_valid"] == 0.0 for r in scored)  # a random model does not write JSON
    stats = json.loads((tmp_path / "p_stats.json").read_text())
    assert {"json_valid", "json_schema", "similarity"} <= set(stats["intervals"][tiny_model_dir.name])
    assert main([*args, "--json-schema", str(tmp_path / "missing.json")]) == 2
