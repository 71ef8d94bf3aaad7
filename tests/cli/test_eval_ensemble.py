"""`tunelab eval A B --data FILE`: several models answer as one ensemble, through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import build_tiny_llama, write_color_task
from tunelab.cli.eval import load_model_or_ensemble
from tunelab.cli.main import main


def _predictions(path: Path) -> list[str]:
    return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


def test_an_ensemble_of_one_model_twice_answers_as_the_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "test.jsonl", 8)
    alone, twice = tmp_path / "alone.jsonl", tmp_path / "twice.jsonl"
    common = ["--data", str(data), "--max-new-tokens", "6"]
    assert main(["eval", str(tiny_model_dir), *common, "--out", str(alone)]) == 0
    # A mixture (or product) of one distribution with itself is that distribution: the same greedy answers.
    for mode in ("probs", "logits"):
        args = ["eval", str(tiny_model_dir), str(tiny_model_dir), *common, "--ensemble", mode, "--out", str(twice)]
        assert main(args) == 0
        assert _predictions(twice) == _predictions(alone)


def test_member_weights_choose_whose_distribution_counts(tmp_path: Path, tiny_model_dir: Path) -> None:
    other = build_tiny_llama(tmp_path / "other", seed=1)
    specs = [str(tiny_model_dir), str(other)]
    members = [load_model_or_ensemble([s], "probs", None)[0] for s in specs]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        own = [m(input_ids=ids).logits.log_softmax(-1) for m in members]
        assert not torch.allclose(own[0], own[1]), "two different models (else the test shows nothing)"
        for k, weights in enumerate(([1.0, 0.0], [0.0, 1.0])):
            ensemble, _ = load_model_or_ensemble(specs, "probs", weights)
            mixed = ensemble(input_ids=ids).logits.log_softmax(-1)
            torch.testing.assert_close(mixed, own[k], rtol=1e-4, atol=1e-4)


def test_ensemble_mistakes_exit_2(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_color_task(tmp_path / "test.jsonl", 4)
    code = main(["eval", str(tiny_model_dir), str(tiny_model_dir), "--data", str(data), "--weights", "1"])
    assert code == 2 and "one per model" in capsys.readouterr().err
