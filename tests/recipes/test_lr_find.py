"""Learning-rate range test: the schedule, smoothing and suggestion by hand; on the tiny model it runs, stops on
divergence, leaves the weights as they were; `tunelab lr-find` writes its plot and numbers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from tests.tiny import write_color_task
from tests.train.test_guard import items
from tunelab.cli.main import main
from tunelab.core.errors import ConfigError
from tunelab.models.load import load_model
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.lr_find import lr_find, lr_schedule, smooth, suggest
from tunelab.train.config import TrainingSection


def test_schedule_is_exponential() -> None:
    assert lr_schedule(1e-4, 1e-2, 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    lrs = lr_schedule(1e-7, 1.0, 100)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0)
    ratios = {round(b / a, 9) for a, b in itertools.pairwise(lrs)}
    assert len(ratios) == 1


def test_smoothing_is_bias_corrected() -> None:
    assert smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    # avg1 = 0.02*2 = 0.04 -> 0.04/0.02 = 2; avg2 = 0.98*0.04 = 0.0392 -> 0.0392/(1-0.98^2) = 0.0392/0.0396
    assert smooth([2.0, 0.0]) == pytest.approx([2.0, 0.0392 / 0.0396])


def test_suggestion_is_the_steepest_descent() -> None:
    lrs = lr_schedule(1e-5, 1.0, 51)  # log10 steps of 0.1: lrs[20] is 1e-3
    # Falls fastest at 1e-3 (tanh), bottoms out at 1e-1, then climbs.
    curve = [2 - math.tanh(2 * (math.log10(x) + 3)) + 50 * max(0.0, math.log10(x) + 1) ** 2 for x in lrs]
    lr, method = suggest(lrs, curve)
    assert method == "steepest" and lr == pytest.approx(1e-3)
    # The minimum comes too early to measure a slope: a tenth of its rate.
    early = [1.0, 0.5, 2.0, 3.0, 9.0]
    assert suggest([1e-4, 1e-3, 1e-2, 1e-1, 1.0], early) == (pytest.approx(1e-4), "min/10")


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_range_test_runs_and_restores_the_weights(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    before = weights(model)
    cfg = TrainingSection(batch_size=4, grad_accum=2, precision="fp32")
    result = lr_find(
        model, OBJECTIVES["sft"], items(), cfg, pad_id=0, device=torch.device("cpu"), bf16=False,
        start=1e-5, end=1e-2, steps=12,
    )  # fmt: skip
    assert len(result.lrs) == 12 and not result.diverged
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1e-2)
    assert 1e-6 <= result.suggestion <= 1e-2
    assert result.smoothed[-1] < result.smoothed[0]  # the rates up to 1e-2 do train the tiny model
    for key, value in weights(model).items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_range_test_stops_when_the_loss_diverges(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    before = weights(model)
    cfg = TrainingSection(batch_size=4, precision="fp32", max_grad_norm=None)
    result = lr_find(
        model, OBJECTIVES["sft"], items(), cfg, pad_id=0, device=torch.device("cpu"), bf16=False,
        start=1e-4, end=1e4, steps=60,
    )  # fmt: skip
    assert result.diverged and len(result.lrs) < 60
    if math.isfinite(result.losses[-1]):  # stopped by the 4x rule rather than by a NaN
        assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert result.suggestion < result.lrs[-1]
    for key, value in weights(model).items():
        assert torch.equal(value, before[key]), key


def test_bad_range_is_a_config_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--start"):
        lr_find(
            load_model(str(tiny_model_dir)), OBJECTIVES["sft"], items(), TrainingSection(), pad_id=0,
            device=torch.device("cpu"), bf16=False, start=1e-2, end=1e-4,
        )  # fmt: skip


def test_cli_writes_plot_and_numbers(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_color_task(tmp_path / "color.jsonl", 64)
    config = tmp_path / "color.yaml"
    config.write_text(
        f"model: {{source: {tiny_model_dir}}}\ndata: {{train: {data}}}\nmethod: {{name: lora, r: 4}}\n"
        f"training: {{precision: fp32, batch_size: 8}}\noutput: {{dir: {tmp_path / 'runs'}}}\n"
    )
    args = ["lr-find", str(config), "--start", "1e-5", "--end", "10", "--steps", "30"]
    assert main([*args, "--set", "training.num_threads=1"]) == 0
    run_dir = tmp_path / "runs" / "color-lr-find"
    found = json.loads((run_dir / "lr_find.json").read_text())
    assert 1e-6 <= found["suggestion"] <= 10 and len(found["lrs"]) == len(found["smoothed"]) <= 30
    assert (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "adapter").exists() and not (tmp_path / "runs" / "color").exists()
    assert main(args) == 0  # a second run replaces the first
