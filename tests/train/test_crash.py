"""Crash tests: a training run is SIGKILLed at many points chosen at random (seeded) — while it starts, while a
checkpoint is being written, at a random moment after a checkpoint, between saving the result and the final
checkpoint — and resumed after each kill; the final weights equal an uninterrupted run's to the bit, and so do
its metric lines. The same for a continual run (killed in a stage, between stages and in the next stage).

The model is wider than the other tests' (hidden 256, fully trained: 15 MB checkpoints), so that writing a
checkpoint takes long enough to be killed in the middle of it. Each kill is followed by a start as a user would
make it: `--resume` once the run folder holds its config, a plain start before that.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_config
from tests.recipes.continual.test_resume import ANSWERS, COMMON
from tests.recipes.continual.test_run import write_task
from tests.tiny import build_tiny_llama
from tests.train.test_resume import comparable
from tunelab.config import dump_config, load_config

pytestmark = pytest.mark.timeout(600)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
Condition = Callable[[], bool]


def tunelab(config: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "tunelab.cli", "train", str(config), *(["--resume"] if resume else [])]
    return subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, condition: Condition, timeout: float = 180) -> bool:
    """SIGKILL `proc` as soon as `condition` holds (polled every millisecond); False if it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        assert time.monotonic() < deadline, "the run neither finished nor reached the kill point"
        time.sleep(0.001)
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else proc.returncode
    return False


def newest_step(checkpoints: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in checkpoints.glob("step-*")] if checkpoints.is_dir() else []
    return max(steps, default=0)


def writing(checkpoints: Path) -> Condition:
    """A checkpoint is being written (its temporary folder exists)."""
    return lambda: checkpoints.is_dir() and any(p.name.startswith(".tmp-step-") for p in checkpoints.iterdir())


def after_checkpoints(checkpoints: Path, k: int, delay: float) -> Condition:
    """`delay` seconds after the k-th checkpoint this process wrote appeared."""
    start, seen = newest_step(checkpoints), [0.0]

    def condition() -> bool:
        if not seen[0] and newest_step(checkpoints) >= start + 2 * k:
            seen[0] = time.monotonic()
        return bool(seen[0]) and time.monotonic() - seen[0] >= delay

    return condition


def after_seconds(seconds: float) -> Condition:
    start = time.monotonic()
    return lambda: time.monotonic() - start >= seconds


def crash_and_resume(
    config: Path, run_dir: Path, kills: list[Callable[[], Condition]], checkpoints: Path
) -> list[int | None]:
    """Start the run, kill it at each point in turn (a fresh condition per process), resuming after each; then
    resume to the end. Returns the newest checkpoint's step at each kill (None: the run had finished first)."""
    at: list[int | None] = []
    for make in kills:
        proc = tunelab(config, resume=(run_dir / "config.yaml").is_file() or (run_dir / "continual.yaml").is_file())
        at.append(newest_step(checkpoints) if kill_when(proc, make()) else None)
    final = tunelab(config, resume=True)
    assert kill_when(final, lambda: False) is False
    return at


def test_killed_at_random_points_and_resumed_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    model = build_tiny_llama(tmp_path / "model", hidden=256)
    configs = {}
    for name in ("straight", "crashed"):
        cfg = tiny_config(tmp_path, model, "method.name=full", "training.max_steps=30", "training.save_every=2",
                          "training.batch_size=4", "training.dropout=0.1", "training.log_every=1",
                          "training.learning_rate=1e-3", "training.num_threads=1", "eval.baseline=false",
                          "eval.generate=false", name=name)  # fmt: skip
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(dump_config(cfg))
    straight = tunelab(configs["straight"], resume=False)  # alongside the crashed run: one thread each

    run_dir = tmp_path / "runs" / "crashed"
    checkpoints = run_dir / "checkpoints"
    rng = random.Random(18)
    kills: list[Callable[[], Condition]] = [
        lambda: after_seconds(rng.uniform(1.0, 6.0)),  # while it starts: imports, data, model, first steps
        lambda: writing(checkpoints),
        lambda: after_checkpoints(checkpoints, rng.randint(2, 6), rng.uniform(0, 0.05)),
        lambda: writing(checkpoints),
        lambda: after_checkpoints(checkpoints, rng.randint(2, 6), rng.uniform(0, 0.05)),
        lambda: (run_dir / "model").is_dir,  # the result is saved, the final checkpoint not yet
    ]
    at = crash_and_resume(configs["crashed"], run_dir, kills, checkpoints)
    assert kill_when(straight, lambda: False) is False
    print(f"killed at checkpoint steps {at} of 30")
    landed = [step for step in at if step is not None]
    assert len(landed) >= 5 and len(set(landed)) >= 3, f"kills spread over the run (checkpoint steps): {at}"

    a = load_file(tmp_path / "runs" / "straight" / "model" / "model.safetensors")
    b = load_file(run_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert comparable(run_dir) == comparable(tmp_path / "runs" / "straight")
    assert not [p for p in run_dir.rglob(".tmp-*")], "no leftovers of the killed saves"


def test_a_continual_run_killed_at_random_points_resumes_to_the_uninterrupted_result(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    files = {t: write_task(tmp_path, t, 40, seed, ANSWERS) for seed, t in enumerate(["color", "size"])}
    configs = {}
    for name in ("straight", "crashed"):
        stages = [{"name": t, "data": {"train": [str(a)], "validation": [str(b)]}} for t, (a, b) in files.items()]
        raw = {"model": {"source": str(tiny_model_dir)}, "output": {"dir": str(tmp_path / "runs"), "name": name},
               "stages": stages}  # fmt: skip
        replay = ["continual.replay.fraction=0.25", "continual.replay.buffer_size=20"]
        cfg = load_config(None, [*COMMON, *replay, "method.dropout=0.1"], base=raw)
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(dump_config(cfg))
    straight = tunelab(configs["straight"], resume=False)

    run_dir = tmp_path / "runs" / "crashed"
    rng = random.Random(7)
    kills: list[Callable[[], Condition]] = [
        lambda: after_checkpoints(run_dir / "color" / "checkpoints", 1, rng.uniform(0, 0.05)),  # in stage 1
        lambda: (run_dir / "continual_state.json").is_file,  # stage 1 recorded, stage 2 not begun
        lambda: after_checkpoints(run_dir / "size" / "checkpoints", rng.randint(1, 2), rng.uniform(0, 0.05)),
    ]
    at = crash_and_resume(configs["crashed"], run_dir, kills, run_dir / "size" / "checkpoints")
    assert kill_when(straight, lambda: False) is False
    print(f"killed at stage-2 checkpoint steps {at} of 6")
    assert None not in at, f"every kill landed before the run ended: {at}"

    runs = tmp_path / "runs"
    got, want = (json.loads((runs / n / "continual_state.json").read_text()) for n in ("crashed", "straight"))
    assert got["matrix"] == want["matrix"] and got["stages"] == want["stages"]
    assert [s["stage"] for s in got["stages"]] == ["color", "size"]
    for stage in ("color", "size"):
        a = load_file(tmp_path / "runs" / "straight" / stage / "adapter" / "adapter_model.safetensors")
        b = load_file(run_dir / stage / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
        assert comparable(run_dir / stage) == comparable(tmp_path / "runs" / "straight" / stage)
    for name in ("replay/size.jsonl", "replay_buffer.json"):
        assert (run_dir / name).read_text() == (tmp_path / "runs" / "straight" / name).read_text()
