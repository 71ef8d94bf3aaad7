"""`output.overwrite: true` replaces a run only once the new run has started: a new run that fails before its
first step (a wrong data path, an interrupt) puts the old run back; one killed in that window leaves the old run
aside, and the next start puts it back before deciding again; a new run that trains replaces it and leaves
nothing aside."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import tunelab.recipes.run as train_run
from tests.helpers import AfterStep, tiny_config
from tunelab.core.errors import DataError, RunError
from tunelab.recipes.run import run_training
from tunelab.recipes.runs import aside

SHORT = ["training.max_steps=2", "training.log_every=1", "eval.baseline=false", "eval.generate=false",
         "training.num_threads=1"]  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_overwrite_keeps_the_old_run_until_the_new_one_has_started(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT, name="kept")).run_dir
    old = digests(run_dir)

    # The new run cannot start: its data file does not exist. The old run is back, as it was.
    broken = tiny_config(tmp_path, tiny_model_dir, *SHORT, "output.overwrite=true",
                         f"data.train={tmp_path / 'missing.jsonl'}", name="kept")  # fmt: skip
    with pytest.raises(DataError):
        run_training(broken)
    assert digests(run_dir) == old and not aside(run_dir).exists()

    # Interrupted in its first step (Ctrl-C before any step ended): the old run is back too.
    real_fit = train_run.fit

    def interrupted(*args, **kwargs):
        def stop(step: int) -> None:
            raise KeyboardInterrupt

        hooks = [AfterStep(stop), *kwargs.get("hooks", ())]  # before the hook that drops the old run
        return real_fit(*args, **{**kwargs, "hooks": hooks})

    monkeypatch.setattr(train_run, "fit", interrupted)
    replacing = tiny_config(tmp_path, tiny_model_dir, *SHORT, "output.overwrite=true", "training.seed=7", name="kept")
    with pytest.raises(KeyboardInterrupt):
        run_training(replacing)
    assert digests(run_dir) == old and not aside(run_dir).exists()
    monkeypatch.setattr(train_run, "fit", real_fit)

    # Killed outright before its first step: the old run waits aside; the next start puts it back first (and
    # here, without overwrite, refuses to replace it).
    run_dir.rename(aside(run_dir))
    run_dir.mkdir()
    shutil.copy(aside(run_dir) / "config.yaml", run_dir / "config.yaml")
    with pytest.raises(RunError, match="already exists"):
        run_training(tiny_config(tmp_path, tiny_model_dir, *SHORT, name="kept"))
    assert digests(run_dir) == old and not aside(run_dir).exists()

    # A new run that trains replaces the old one, and nothing is left aside.
    done = run_training(replacing)
    assert digests(run_dir) != old and (run_dir / "adapter").is_dir()
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["kept"]
    assert done.final["steps"] == 2
