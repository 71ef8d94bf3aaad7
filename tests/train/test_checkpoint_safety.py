"""Checkpoints that cannot run code, survive power loss and full disks: a pickled checkpoint (older format, or a
crafted DeepSpeed file) is refused and never unpickled; a newest checkpoint that does not read back whole is
passed over for the one before it, with a warning; leftovers of killed saves are swept; the trained result is
saved before the final checkpoint; a full disk while checkpointing is a clear error that leaves the previous
checkpoint as it was, and the run resumes once space is freed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import tunelab.recipes.run as train_run
import tunelab.train.loop as loop
from tests.disk import fill, small_disk
from tests.helpers import AfterStep, tiny_config
from tests.train.test_distributed import free_port
from tests.train.test_resume import comparable
from tunelab.cli.main import main as cli_main
from tunelab.config import TunelabConfig, dump_config
from tunelab.core.errors import DiskFullError, RunError
from tunelab.recipes.run import run_training
from tunelab.train.checkpoint import STATE, TRAINING_STATE, WEIGHTS

SHORT = ["training.max_steps=6", "training.save_every=2", "training.keep_checkpoints=3", "training.log_every=1",
         "eval.baseline=false", "eval.generate=false", "training.num_threads=1"]  # fmt: skip
RESULT = Path("adapter") / "adapter_model.safetensors"


class Payload:
    """Unpickling this writes `marker`: what a crafted checkpoint in a shared run folder could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def write_yaml(cfg: TunelabConfig, path: Path) -> Path:
    path.write_text(dump_config(cfg))
    return path


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.max_steps=4", name="shared")
    run_dir = run_training(cfg).run_dir
    ckpt = run_dir / "checkpoints" / "step-00000004"
    # Nothing in a checkpoint is a pickle, and state.json lists every file with its size.
    listed = json.loads((ckpt / STATE).read_text())["files"]
    assert sorted(listed) == sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()
                                    and p.name != STATE)  # fmt: skip
    assert {p.suffix for p in ckpt.iterdir()} == {".json", ".safetensors"}

    # The older format's optimizer.pt, crafted to run code when unpickled, in every checkpoint of the folder.
    marker = tmp_path / "code-ran"
    for folder in (run_dir / "checkpoints").glob("step-*"):
        for name in (f"{TRAINING_STATE}.json", f"{TRAINING_STATE}.safetensors"):
            (folder / name).unlink()
        torch.save({"optimizer": Payload(marker), "scheduler": {}, "rng": {}}, folder / "optimizer.pt")
    shutil.rmtree(run_dir / "adapter")
    with pytest.raises(RunError, match="cannot be resumed safely"):
        run_training(cfg, resume=True)
    assert cli_main(["train", str(write_yaml(cfg, tmp_path / "shared.yaml")), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "cannot be resumed safely" in err and "Traceback" not in err
    assert not marker.exists(), "the crafted file was unpickled"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload does work when unpickled: the test could fail
    assert marker.exists()


DEEPSPEED_SCRIPT = """
import os, sys, torch
from pathlib import Path
from torch import nn
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
torch.distributed.init_process_group("gloo")
from tests.train.test_checkpoint_safety import Payload
from tunelab.core.errors import RunError
from tunelab.train.config import TrainingSection
from tunelab.train import zero

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
config = zero.engine_config({{"zero_optimization": {{"stage": 2}}}}, TrainingSection(batch_size=2), 1)
engine = zero.build_engine(model, optimizer, config)
engine.backward(engine(torch.ones(2, 4)).sum()); engine.step()
folder = Path(sys.argv[1])
zero.save_engine_state(engine, folder)
zero.load_engine_state_(engine, folder)  # DeepSpeed's own files read back with weights_only=True
print("clean load ok")
(state,) = (folder / zero.ENGINE_DIR).rglob("mp_rank_00_model_states.pt")
torch.save({{"module": Payload(Path(sys.argv[2]))}}, state)
try:
    zero.load_engine_state_(engine, folder)
except RunError as exc:
    print("refused:", exc)
"""


def test_a_crafted_deepspeed_file_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    marker = tmp_path / "code-ran"
    script = DEEPSPEED_SCRIPT.format(port=free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ckpt"), str(marker)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "clean load ok" in done.stdout
    assert "refused:" in done.stdout and "could run code" in done.stdout, done.stdout[-2000:]
    assert not marker.exists(), "DeepSpeed's loader unpickled the crafted file"


def test_a_checkpoint_that_does_not_read_back_falls_back_to_the_one_before(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir, *SHORT, name="power")
    run_dir = run_training(cfg).run_dir
    reference = tmp_path / "reference.safetensors"
    shutil.copy(run_dir / RESULT, reference)
    straight = comparable(run_dir)
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000004", "step-00000006"]

    # As a power loss before the data reached the disk leaves it: the newest checkpoint's files empty (and the
    # final one gone with the result, as a kill at the end would leave it); leftovers of a killed save beside.
    shutil.rmtree(checkpoints / "step-00000006")
    shutil.rmtree(run_dir / "adapter")
    (checkpoints / "step-00000004" / WEIGHTS).write_bytes(b"")
    (checkpoints / ".tmp-step-00000005").mkdir()
    (checkpoints / ".tmp-step-00000005" / WEIGHTS).write_bytes(b"half")
    (checkpoints / ".best.safetensors.1a2b3c4d.tmp").write_bytes(b"half")

    out = io.StringIO()
    run_training(cfg, resume=True, console=Console(file=out, width=300))
    printed = out.getvalue()
    assert "warning: checkpoint" in printed and "step-00000004" in printed and "trainable.safetensors" in printed
    assert_same_weights(run_dir / RESULT, reference)  # resumed from step 2: the same result
    assert comparable(run_dir) == straight
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")], "leftovers swept"

    # No checkpoint reads back: a clear error, not a run started over silently.
    for folder in checkpoints.glob("step-*"):
        (folder / STATE).write_text("{")
    with pytest.raises(RunError, match="no checkpoint reads back whole"):
        run_training(cfg, resume=True)


def test_the_result_is_saved_before_the_final_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[int, bool] = {}
    real = loop.save_checkpoint

    def watched(folder: Path, step: int, *args, **kwargs):
        seen[step] = (folder.parent / RESULT).is_file()
        return real(folder, step, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", watched)
    run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.save_every=4", name="order"))
    assert seen == {4: False, 6: True}


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_the_run_resumes(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.log_every=100", name="ref"))
    with small_disk(tmp_path / "disk", "4m") as disk:
        cfg = tiny_config(tmp_path, tiny_model_dir, *SHORT, "training.log_every=100", f"output.dir={disk}",
                          name="full")  # fmt: skip
        checkpoints = disk / "full" / "checkpoints"
        before: dict[str, str] = {}
        real_fit = train_run.fit

        def fill_after_step_3(*args, **kwargs):
            def on_step(step: int) -> None:
                if step == 3:  # after the step-2 checkpoint, before the step-4 one
                    before.update(digests(checkpoints / "step-00000002"))
                    fill(disk)

            return real_fit(*args, **{**kwargs, "hooks": [*kwargs.get("hooks", ()), AfterStep(on_step)]})

        monkeypatch.setattr(train_run, "fit", fill_after_step_3)
        assert cli_main(["train", str(write_yaml(cfg, tmp_path / "full.yaml"))]) == 2
        err = capsys.readouterr().err
        assert "No space left" in err and "step 4" in err and "B are free" in err, err
        assert "step-00000002" in err and "intact" in err and "Traceback" not in err
        assert [p.name for p in checkpoints.iterdir()] == ["step-00000002"], "no half checkpoint left"
        assert digests(checkpoints / "step-00000002") == before, "the previous checkpoint is as it was"

        monkeypatch.setattr(train_run, "fit", real_fit)
        (disk / "filler.bin").unlink()
        with pytest.raises(DiskFullError):  # still full: the resume says so too, the checkpoint untouched
            fill(disk)
            run_training(cfg, resume=True)
        (disk / "filler.bin").unlink()
        assert digests(checkpoints / "step-00000002") == before
        resumed = run_training(cfg, resume=True)
        assert_same_weights(resumed.run_dir / RESULT, reference.run_dir / RESULT)
        assert comparable(resumed.run_dir) == comparable(reference.run_dir)
