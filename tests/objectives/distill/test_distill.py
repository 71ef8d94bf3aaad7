"""Distillation on tiny models: students made by dropping layers, logit distillation on the fly and from the
top-k cache, feature matching across widths, sequence-level distillation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config
from tests.tiny import build_tiny_llama, write_color_task
from tunelab.core.errors import ConfigError, ModelError
from tunelab.core.types import Message
from tunelab.methods.trained import load_trained
from tunelab.models.generate import generate_answers
from tunelab.models.load import load_model, load_tokenizer
from tunelab.objectives.distill.student import drop_layers_, layers_to_keep, make_student
from tunelab.recipes.run import run_training
from tunelab.train.metrics import read_metrics


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-layer Llama with the tiny tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("teacher"), seed=3, layers=4)


def test_layers_to_keep() -> None:
    assert layers_to_keep(4, "every_other") == [0, 3]  # the last kept layer is the teacher's last
    assert layers_to_keep(30, "every_other") == [*range(0, 28, 2), 29]
    assert layers_to_keep(5, "every_other") == [0, 2, 4]
    with pytest.raises(ConfigError, match="from 0 to 3"):
        layers_to_keep(4, [0, 4])


def test_student_keeps_the_chosen_layers_and_reloads(tmp_path: Path, teacher_dir: Path) -> None:
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    teacher = load_model(str(teacher_dir))
    whole = drop_layers_(load_model(str(teacher_dir)), [0, 1, 2, 3])
    torch.testing.assert_close(whole(ids).logits, teacher(ids).logits)
    student_dir = make_student(str(teacher_dir), tmp_path / "student")
    student = load_model(str(student_dir))
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    by_hand = drop_layers_(load_model(str(teacher_dir)), [0, 3])
    torch.testing.assert_close(student(ids).logits, by_hand(ids).logits)
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    # The renumbered layers keep a consistent KV cache: cached generation equals recomputing every step.
    out = student.generate(ids, max_new_tokens=4, do_sample=False)
    again = student.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(out, again)
    assert load_tokenizer(str(student_dir)).get_vocab() == load_tokenizer(str(teacher_dir)).get_vocab()


def _distill(tmp_path: Path, student: Path, teacher: Path, *overrides: str, name: str):
    cfg = tiny_config(
        tmp_path, student, "method=full", "objective=distill", f"objective.teacher={teacher}", "eval.generate=false",
        "training.max_steps=12", "training.log_every=1", "training.learning_rate=2e-3", *overrides, name=name,
    )  # fmt: skip
    return run_training(cfg)


def test_logit_distillation_moves_the_student_toward_the_teacher(tmp_path: Path, teacher_dir: Path) -> None:
    student = make_student(str(teacher_dir), tmp_path / "student")
    result = _distill(tmp_path, student, teacher_dir, "objective.alpha=1.0", "objective.temperature=2.0", name="kd")
    # val_loss is τ²·KL(teacher ‖ student) per token: it must fall well below where the half-depth student starts.
    assert result.final["val_loss"] < 0.7 * result.baseline["val_loss"]
    losses = [m["loss"] for m in read_metrics(result.run_dir) if "loss" in m]
    assert losses[-1] < losses[0]
    reloaded, _ = load_trained(str(result.run_dir))
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    torch.testing.assert_close(reloaded(ids).logits, result.model(ids).logits)


def test_topk_cache_with_every_token_equals_the_teacher_on_the_fly(tmp_path: Path, teacher_dir: Path) -> None:
    student = make_student(str(teacher_dir), tmp_path / "student")
    common = ["objective.loss=jsd", "objective.alpha=0.7", "training.max_steps=2"]
    live = _distill(tmp_path, student, teacher_dir, *common, name="live")
    cached = _distill(tmp_path, student, teacher_dir, *common, "objective.top_k=300", name="cached")
    assert cached.baseline["val_loss"] == pytest.approx(live.baseline["val_loss"], rel=1e-3)  # fp16 log-probs
    files = list((Path(os.environ["TUNELAB_HOME"]) / "distill").glob("*.safetensors"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert len(before) >= 2  # train and validation entries
    _distill(tmp_path, student, teacher_dir, *common, "objective.top_k=300", name="again")
    assert {f: f.stat().st_mtime_ns for f in files} == before, "a second run reuses the cache"


def test_hidden_and_attention_matching_across_widths(tmp_path: Path, teacher_dir: Path) -> None:
    narrow = build_tiny_llama(tmp_path / "narrow", seed=5, layers=2, hidden=32)
    result = _distill(
        tmp_path, narrow, teacher_dir, "objective.hidden_layers=[[1, 2], [2, 4]]", "objective.hidden_weight=0.5",
        "objective.attention_layers=[[0, 1], [1, 3]]", "objective.alpha=1.0", name="features",
    )  # fmt: skip
    assert result.final["val_loss"] < 0.8 * result.baseline["val_loss"]
    # The projections 32 -> 48 trained with the student but are not part of the saved model.
    assert [p.shape for p in result.model.projections.parameters()] == [torch.Size([48, 32])] * 2
    saved = load_model(str(result.run_dir / "model"))
    assert not any("projection" in name for name, _ in saved.named_parameters())


def test_distill_refuses_layers_the_models_do_not_have(tmp_path: Path, teacher_dir: Path, tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        _distill(tmp_path, tiny_model_dir, teacher_dir, "objective.hidden_layers=[[3, 1]]", name="bad")


def test_sequence_level_distillation_trains_on_the_teacher_answers(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A teacher that learnt to answer "green" to everything; the data says red or blue.
    green = tmp_path / "green.jsonl"
    rows = [json.loads(line) for line in write_color_task(tmp_path / "few.jsonl", 40).read_text().splitlines()]
    for row in rows:
        row["messages"][1]["content"] = "green"
    green.write_text("".join(json.dumps(row) + "\n" for row in rows))
    teacher_cfg = tiny_config(
        tmp_path, tiny_model_dir, f"data.train={green}", "method=full", "training.max_steps=25",
        "training.learning_rate=5e-3", "eval.generate=false", "eval.baseline=false", name="teacher",
    )  # fmt: skip
    teacher = run_training(teacher_cfg).run_dir
    cfg = tiny_config(
        tmp_path, tiny_model_dir, f"data.train={tmp_path / 'few.jsonl'}", "method=full", "objective=seq_distill",
        f"objective.teacher={teacher}", "objective.max_new_tokens=3", "eval.baseline=false", "eval.generate=false",
        "training.max_steps=25", "training.learning_rate=5e-3", name="seq",
    )  # fmt: skip
    result = run_training(cfg)
    answers = [json.loads(line) for line in (result.run_dir / "teacher_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 36  # every training prompt answered once (40 rows, 10% held out)
    assert sum(a["answer"] == "green" for a in answers) >= 30
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["teacher_answers"]["trained"] == sum(bool(a["answer"].strip()) for a in answers)
    # The student learnt the teacher's answer, not the data's.
    student, tokenizer = load_trained(str(result.run_dir))
    said = generate_answers(student, tokenizer, [[Message("user", "what is color of cat")]], max_new_tokens=3)
    assert said == ["green"]


def test_sequence_level_distillation_refuses_a_teacher_that_never_answers(tmp_path: Path, teacher_dir: Path) -> None:
    # The random teacher answers every prompt with newlines only.
    data = write_color_task(tmp_path / "few.jsonl", 20)
    cfg = tiny_config(
        tmp_path, teacher_dir, f"data.train={data}", "objective=seq_distill", f"objective.teacher={teacher_dir}",
        "objective.max_new_tokens=3", "eval.generate=false", "eval.baseline=false", "training.max_steps=4",
        name="mute",
    )  # fmt: skip
    with pytest.raises(ModelError, match="empty answer to all 18 training prompts"):
        run_training(cfg)
