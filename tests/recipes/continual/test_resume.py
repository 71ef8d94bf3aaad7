"""Resuming a killed continual run (three tasks, tiny model): finished stages are not trained again, the stopped
stage continues from its checkpoint (or from its saved weights when it stopped after training), and the result
equals the uninterrupted run's; a changed task list is refused."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab.recipes.continual.run as continual_run
import tunelab.recipes.run as train_run
from tests.helpers import AfterStep
from tests.recipes.continual.test_run import write_task
from tunelab.cli.main import main as cli_main
from tunelab.config import load_config
from tunelab.core.errors import ConfigError, RunError
from tunelab.models.load import load_model
from tunelab.recipes.continual.resume import STATE_FILE, TRAINED_FILE
from tunelab.recipes.continual.run import run_continual

WORDS = ["cat", "dog", "mat", "sky", "one", "two"]
ANSWERS = {"color": ["red", "blue"], "size": ["big", "small"], "mood": ["calm", "loud"]}
COMMON = [
    "training.precision=fp32", "training.learning_rate=5e-3", "training.batch_size=8", "training.max_steps=6",
    "training.save_every=2", "training.log_every=3", "training.num_threads=1", "eval.generate=false",
    "eval.baseline=false", "eval.max_new_tokens=3", "continual.eval_examples=4",
]  # fmt: skip
VARIANTS = {
    "replay+ewc": ["continual.replay.fraction=0.25", "continual.replay.buffer_size=20", "continual.ewc.lambda=100",
                   "continual.ewc.fisher_samples=8"],
    "lora_per_task": ["continual.lora_per_task=true", "continual.baseline=true"],
}  # fmt: skip


class Killed(Exception):
    """Stands in for the process being killed."""


def config(tmp_path: Path, model_dir: Path, name: str, variant: str, tasks: list[str] | None = None):
    tasks = tasks or list(ANSWERS)
    files = {t: write_task(tmp_path, t, 40, seed, ANSWERS) for seed, t in enumerate(ANSWERS)}
    raw = {
        "model": {"source": str(model_dir)},
        "output": {"dir": str(tmp_path / "runs"), "name": name},
        "stages": [{"name": t, "data": {"train": [str(files[t][0])], "validation": [str(files[t][1])]}} for t in tasks],
    }
    return load_config(None, [*COMMON, *VARIANTS[variant]], base=raw)


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch):
    """Records the optimizer steps each stage runs, and kills the run at a chosen (stage, step)."""
    taken: dict[str, list[int]] = defaultdict(list)
    kill: dict[str, tuple[str, int] | None] = {"at": None}
    real_fit = train_run.fit

    def fit(*args, **kwargs):
        stage = Path(args[5]).name  # fit(model, objective, train, val, cfg, run_dir, ...)

        def on_step(step: int) -> None:
            taken[stage].append(step)
            if kill["at"] == (stage, step):
                raise Killed(f"{stage} at step {step}")

        return real_fit(*args, **{**kwargs, "hooks": [*kwargs.get("hooks", ()), AfterStep(on_step)]})

    monkeypatch.setattr(train_run, "fit", fit)
    return taken, kill


def final_weights(run_dir: Path, variant: str) -> dict[str, torch.Tensor]:
    state = json.loads((run_dir / STATE_FILE).read_text())
    if variant == "lora_per_task":
        return {f"{task}/{k}": v for task, path in state["adapters"].items()
                for k, v in load_file(Path(path) / "adapter_model.safetensors").items()}  # fmt: skip
    return dict(load_model(state["source"]).state_dict())


def assert_same_result(done: Path, reference: Path, variant: str) -> None:
    got, want = (json.loads((p / STATE_FILE).read_text()) for p in (done, reference))
    assert got["matrix"] == want["matrix"] and got["baseline"] == want["baseline"]
    assert [s["stage"] for s in got["stages"]] == ["color", "size", "mood"] and got["stages"] == want["stages"]
    a, b = final_weights(done, variant), final_weights(reference, variant)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    if variant == "replay+ewc":
        read = lambda run, name: (run / name).read_text()  # noqa: E731
        assert read(done, "replay/size.jsonl") == read(reference, "replay/size.jsonl"), "the same rows replayed"
        assert read(done, "replay/mood.jsonl") == read(reference, "replay/mood.jsonl")
        assert json.loads(read(done, "replay_buffer.json")) == json.loads(read(reference, "replay_buffer.json"))
        fisher, fisher_ref = (load_file(run / "mood" / "ewc.safetensors") for run in (done, reference))
        assert fisher.keys() == fisher_ref.keys()
        for name in fisher_ref:
            torch.testing.assert_close(fisher[name], fisher_ref[name], rtol=1e-4, atol=1e-9)
    assert json.loads((done / "continual.json").read_text())["full_matrix"] == want["matrix"]
    assert not list(done.glob(f"*/{TRAINED_FILE}")), "the window's weights are removed once a stage is recorded"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_killed_in_a_stage_resumes_to_the_uninterrupted_result(tmp_path: Path, tiny_model_dir: Path, steps, variant):
    taken, kill = steps
    run_continual(config(tmp_path, tiny_model_dir, "whole", variant))
    reference = tmp_path / "runs" / "whole"

    cfg = config(tmp_path, tiny_model_dir, "killed", variant)
    out = tmp_path / "runs" / "killed"
    taken.clear()
    kill["at"] = ("size", 5)  # checkpoints at steps 2 and 4: the resume restarts from step 4
    with pytest.raises(Killed):
        run_continual(cfg)
    assert len(json.loads((out / STATE_FILE).read_text())["stages"]) == 1
    assert (out / "size" / "checkpoints" / "step-00000004").is_dir()

    kill["at"] = None
    taken.clear()
    run_continual(cfg, resume=True)
    assert "color" not in taken, "a finished stage is not trained again"
    assert taken["size"] == [5, 6], "the stopped stage continues from its last checkpoint"
    assert taken["mood"] == [1, 2, 3, 4, 5, 6]
    assert_same_result(out, reference, variant)

    taken.clear()
    assert run_continual(cfg, resume=True) is None and not taken, "resuming a finished run trains nothing"


def test_killed_after_a_stage_trained_reloads_its_weights(
    tmp_path: Path, tiny_model_dir: Path, steps, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken, _ = steps
    run_continual(config(tmp_path, tiny_model_dir, "whole", "replay+ewc"))
    cfg = config(tmp_path, tiny_model_dir, "killed", "replay+ewc")
    out = tmp_path / "runs" / "killed"
    real_fisher = continual_run.fisher_after_stage

    def fisher_then_kill(*args, **kwargs):
        if kwargs["task"] == "size":
            raise Killed("in the Fisher of stage size")
        return real_fisher(*args, **kwargs)

    monkeypatch.setattr(continual_run, "fisher_after_stage", fisher_then_kill)
    with pytest.raises(Killed):
        run_continual(cfg)
    assert (out / "size" / TRAINED_FILE).is_file() and (out / "size" / "eval.json").is_file()
    monkeypatch.setattr(continual_run, "fisher_after_stage", real_fisher)
    taken.clear()
    run_continual(cfg, resume=True)
    assert "color" not in taken and "size" not in taken, "the trained stage is reloaded, not trained again"
    assert_same_result(out, tmp_path / "runs" / "whole", "replay+ewc")


def test_resume_checks_the_run_and_the_cli_resumes_a_folder(tmp_path: Path, tiny_model_dir: Path, steps) -> None:
    taken, kill = steps
    cfg = config(tmp_path, tiny_model_dir, "cut", "replay+ewc")
    with pytest.raises(RunError, match="Cannot resume"):
        run_continual(cfg, resume=True)
    kill["at"] = ("color", 3)
    with pytest.raises(Killed):
        run_continual(cfg)
    with pytest.raises(RunError, match="already exists"):
        run_continual(cfg)
    reordered = config(tmp_path, tiny_model_dir, "cut", "replay+ewc", tasks=["size", "color", "mood"])
    with pytest.raises(ConfigError, match="task list"):
        run_continual(reordered, resume=True)
    other = config(tmp_path, tiny_model_dir, "cut", "replay+ewc").model_copy(deep=True)
    other.continual.replay.seed = 7
    with pytest.raises(ConfigError, match="continual: section"):
        run_continual(other, resume=True)

    kill["at"] = None
    taken.clear()
    assert cli_main(["train", "--resume", str(tmp_path / "runs" / "cut")]) == 0
    assert taken["color"] == [3, 4, 5, 6] and taken["mood"] == [1, 2, 3, 4, 5, 6]
    state = json.loads((tmp_path / "runs" / "cut" / STATE_FILE).read_text())
    assert [s["stage"] for s in state["stages"]] == ["color", "size", "mood"] and len(state["matrix"]) == 3
