"""Continual runs on the tiny model: replay over successive runs, EWC through the loop's regularizer (hand-computed
penalty, less drift of important weights than naive training), an adapter per task with routing, and the report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from tunelab.config import load_config
from tunelab.core.errors import ConfigError, RunError
from tunelab.models.load import load_model
from tunelab.recipes.continual.report import continual_report
from tunelab.recipes.continual.run import BUFFER_FILE, STATE_FILE, load_task_model, run_continual
from tunelab.regularizers.ewc import ewc_penalty
from tunelab.regularizers.fisher import EWCState, load_ewc, save_ewc
from tunelab.train.config import TrainingSection
from tunelab.train.techniques import build_techniques

WORDS = ["cat", "dog", "mat", "sky", "one", "two"]
ANSWERS = {"color": ["red", "blue"], "size": ["big", "small"]}


def write_task(
    folder: Path, task: str, n: int, seed: int, answers: dict[str, list[str]] = ANSWERS
) -> tuple[Path, Path]:
    """'<task> of <word>' -> a fixed answer per word (from `answers[task]`); train and validation files."""
    rng = random.Random(seed)
    answer = {w: answers[task][i % 2] for i, w in enumerate(WORDS)}
    rows = []
    for k in range(n):
        word = rng.choice(WORDS)
        rows.append({"messages": [{"role": "user", "content": f"{task} of {word} #{k}"},
                                  {"role": "assistant", "content": answer[word]}]})  # fmt: skip
    train, val = folder / f"{task}.jsonl", folder / f"{task}_val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[: n - 8]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n - 8 :]))
    return train, val


COMMON = [
    "training.precision=fp32", "training.learning_rate=5e-3", "training.batch_size=8", "training.max_steps=6",
    "training.log_every=3", "eval.generate=false", "eval.baseline=false", "eval.max_new_tokens=3",
    "continual.eval_examples=4",
]  # fmt: skip


def staged(tmp_path: Path, model_dir: Path, name: str, *overrides: str):
    files = {t: write_task(tmp_path, t, 48, seed) for seed, t in enumerate(ANSWERS)}
    raw = {
        "model": {"source": str(model_dir)},
        "output": {"dir": str(tmp_path / "runs"), "name": name},
        "stages": [{"name": t, "data": {"train": [str(tr)], "validation": [str(va)]}} for t, (tr, va) in files.items()],
    }
    return load_config(None, [*COMMON, *overrides], base=raw)


def test_ewc_penalty_through_the_training_hook(tmp_path: Path) -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    state = EWCState({"weight": torch.tensor([[0.5, 2.0]])}, {"weight": torch.tensor([[0.0, 1.0]])})
    path = save_ewc(state, tmp_path / "ewc.safetensors")
    regularizer = build_techniques(model, TrainingSection(ewc_state=str(path), ewc_lambda=4.0))
    # λ/2 · Σ F (θ - θ*)² = 4/2 · (0.5 · 1² + 2 · 1²) = 5
    assert float(regularizer.penalty().detach()) == pytest.approx(5.0)
    regularizer.penalty().backward()
    # ∂/∂θ = λ F (θ - θ*) = 4 · [0.5, 2] · [1, 1]
    torch.testing.assert_close(model.weight.grad, torch.tensor([[2.0, 8.0]]))


def test_replay_over_successive_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    (c_train, c_val), (s_train, s_val) = write_task(tmp_path, "color", 48, 0), write_task(tmp_path, "size", 48, 1)
    runs = tmp_path / "runs"
    first = load_config(None, [
        *COMMON, f"data.train={c_train}", f"data.validation={s_val}", f"model.source={tiny_model_dir}",
        f"output.dir={runs}", "output.name=color", "continual.replay.fraction=0.25", "continual.replay.buffer_size=30",
    ])  # fmt: skip
    first.data.validation = [str(c_val)]
    run_continual(first)
    state = json.loads((runs / "color" / STATE_FILE).read_text())
    assert [t["name"] for t in state["tasks"]] == ["color"] and len(state["matrix"]) == 1
    assert json.loads((runs / "color" / BUFFER_FILE).read_text())["seen"] == 40

    second = load_config(None, [
        *COMMON, f"data.train={s_train}", f"data.validation={s_val}", f"model.source={runs / 'color'}",
        f"output.dir={runs}", "output.name=size", "continual.replay.fraction=0.25", "continual.replay.buffer_size=30",
    ])  # fmt: skip
    run_continual(second)
    out = runs / "size"
    replayed = [json.loads(line) for line in (out / "replay" / "size.jsonl").read_text().splitlines()]
    # 40 new rows, a quarter replayed: 40 · 0.25 / 0.75 = 13.3 -> 13 rows, all from the color task's training rows.
    color_rows = {line for line in c_train.read_text().splitlines()}
    assert len(replayed) == 13 and all(r["task"] == "color" for r in replayed)
    assert all(json.dumps({"messages": r["messages"]}) in color_rows for r in replayed)
    assert json.loads((out / BUFFER_FILE).read_text())["seen"] == 80  # the buffer went on from the first run
    report = json.loads((out / "continual.json").read_text())
    assert report["tasks"] == ["color", "size"] and report["stages"][1]["replayed"] == 13
    matrix = report["full_matrix"]
    assert matrix[0][1] is None and all(v is not None for v in matrix[1])
    assert report["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
    assert "| 1: color |" in (out / "continual.md").read_text()


def test_ewc_reduces_drift_of_important_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    naive = staged(tmp_path, tiny_model_dir, "naive")
    ewc = staged(tmp_path, tiny_model_dir, "ewc", "continual.ewc.lambda=1e5", "continual.ewc.fisher_samples=16")
    run_continual(naive)
    run_continual(ewc)
    stage_state = load_ewc(tmp_path / "runs" / "ewc" / "color" / "ewc.safetensors")
    assert stage_state.meta["last_task"] == "color" and stage_state.fisher
    assert yaml_ewc_state(tmp_path / "runs" / "ewc" / "size") is not None  # the second stage trained with it

    def weighted_drift(run: str) -> float:
        final = json.loads((tmp_path / "runs" / run / STATE_FILE).read_text())["source"]
        with torch.no_grad():
            return float(ewc_penalty(load_model(final), stage_state.fisher, stage_state.anchor, 2.0))

    # Stage 1 is the same in both runs (same seed), so both start stage 2 at the anchor.
    assert weighted_drift("ewc") < 0.5 * weighted_drift("naive")


def yaml_ewc_state(stage_dir: Path) -> str | None:
    import yaml

    return yaml.safe_load((stage_dir / "config.yaml").read_text())["training"]["ewc_state"]


def test_lora_per_task_saves_one_adapter_per_task_and_routes(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = staged(tmp_path, tiny_model_dir, "routed", "continual.lora_per_task=true", "continual.baseline=true")
    run_continual(cfg)
    out = tmp_path / "runs" / "routed"
    state = json.loads((out / STATE_FILE).read_text())
    assert set(state["adapters"]) == {"color", "size"}
    assert all((Path(p) / "adapter_model.safetensors").is_file() for p in state["adapters"].values())
    assert state["source"] == str(tiny_model_dir)  # never merged: every stage starts from the base
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    color, size = load_task_model(out, "color"), load_task_model(out, "size")
    with torch.no_grad():
        assert not torch.allclose(color(input_ids=ids).logits, size(input_ids=ids).logits)
    # Routing: the color task keeps its own adapter, so its score after stage 2 is its score after stage 1.
    matrix = state["matrix"]
    assert matrix[1][0] == matrix[0][0]
    report = json.loads((out / "continual.json").read_text())
    assert report["forgetting"] == 0.0 and report["forward_transfer"] is not None
    with pytest.raises(RunError, match="color, size"):
        load_task_model(out, "dates")


def test_stage_without_validation_is_a_config_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    train, _ = write_task(tmp_path, "color", 24, 0)
    cfg = load_config(None, [*COMMON, f"data.train={train}", f"model.source={tiny_model_dir}",
                             f"output.dir={tmp_path}", "continual.ewc.lambda=10"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.validation"):
        run_continual(cfg)


def test_report_of_a_hand_built_matrix_over_successive_runs() -> None:
    # Run 1 knew only task a; run 2 added b and c. Rows: after stage 1, 2, 3.
    matrix = [[0.8, None, None], [0.5, 0.9, None], [0.6, 0.7, 0.95]]
    r = continual_report(["a", "b", "c"], matrix, baseline=[0.1, 0.2, 0.3])
    assert r.average_accuracy == pytest.approx((0.6 + 0.7 + 0.95) / 3)
    assert r.backward_transfer == pytest.approx(((0.6 - 0.8) + (0.7 - 0.9)) / 2)  # -0.2
    assert r.per_task_forgetting == pytest.approx([0.8 - 0.6, 0.9 - 0.7])
    assert r.forward_transfer is None  # R[0][1] was never measured
    assert "| 1: a | 80.0 | – | – |" in r.to_markdown()
    with pytest.raises(ValueError, match="diagonal"):
        continual_report(["a", "b"], [[None, None], [0.5, 0.5]])
