"""SIGTERM (`kill PID`, a scheduler's pre-emption, the dashboard's Stop) stops a run at the next step boundary with
its result and a checkpoint saved, exits 143, and `--resume` trains it to the end."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

import tunelab.recipes.run as train_run
from tests.helpers import AfterStep, tiny_config
from tunelab.core.errors import RunStopped
from tunelab.recipes.run import run_training
from tunelab.train.stop import stop_on_sigterm

SHORT = ["training.epochs=2", "eval.baseline=false", "eval.generate=false", "training.save_every=100"]


def test_sigterm_stops_saves_and_resumes(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fit = train_run.fit

    def terminated_at_step_3(*args, **kwargs):
        kill = AfterStep(lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None)
        return real_fit(*args, **{**kwargs, "hooks": [*kwargs.get("hooks", ()), kill]})

    monkeypatch.setattr(train_run, "fit", terminated_at_step_3)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped) as stopped:
        run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT))
    assert stopped.value.exit_code == 143 and "SIGTERM" in str(stopped.value) and "--resume" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handler is back
    run_dir = tmp_path / "runs" / "run"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000003"]  # save_every is 100
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not any(line.get("final") for line in lines)  # stopped fast: no final validation pass
    assert not (run_dir / "eval.json").exists()

    monkeypatch.setattr(train_run, "fit", real_fit)
    again = run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT), resume=True)
    assert again.final["steps"] == 2 * 18  # 144 training rows / 8 per step, two epochs


def test_stop_request_outside_the_main_thread_leaves_signals_alone() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[bool] = []

    def in_thread() -> None:
        with stop_on_sigterm() as stop:
            seen.append(stop.requested)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert seen == [False] and signal.getsignal(signal.SIGTERM) is before
