"""Studies through the real command, as separate processes: a study SIGKILLed during a trial and started again
continues (finished trials kept, the interrupted one failed and run again with its values, nothing else lost);
two workers share one study on a real PostgreSQL server (no trial lost or run twice); `--workers 2` on one
machine."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from tests.recipes.tune.common import LR, study_config, tunelab

SLOWER = {"epochs": 3}  # 54 steps a trial: a kill lands inside one


def trials_of(name: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_killed_study_continues_where_it_stopped(tmp_path: Path, tiny_model_dir: Path) -> None:
    tune = {"study": "k", "trials": 3, "heartbeat": 1, "pruner": "none", "params": {"training.learning_rate": LR}}
    path = study_config(tmp_path, tiny_model_dir, tune, training=SLOWER)
    storage = f"sqlite:///{tmp_path / 'runs' / 'k' / 'study.db'}"
    worker = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "tune", str(path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    trials: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            trials = trials_of("k", storage) if (tmp_path / "runs" / "k" / "study.db").is_file() else []
        except (KeyError, sqlalchemy.exc.OperationalError):  # the file is there, the study (or its tables) not yet
            trials = []
        states = [t.state for t in trials]
        if states[:2] == [TrialState.COMPLETE, TrialState.RUNNING]:
            break
        time.sleep(0.05)
    assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = trials_of("k", storage)
    assert [t.state for t in before[:2]] == [TrialState.COMPLETE, TrialState.RUNNING]
    killed_values = before[1].params

    done = tunelab("tune", str(path))
    assert done.returncode == 0, done.stderr
    after = trials_of("k", storage)
    assert after[0].state == TrialState.COMPLETE and after[0].values == before[0].values  # kept, not rerun
    assert after[1].state == TrialState.FAIL  # the interrupted one: marked failed...
    rerun = [t for t in after if t.system_attrs.get("failed_trial") == 1]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE and rerun[0].params == killed_values
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(after) == 4  # ...and run again; the study has its 3 trials, nothing more
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rows = (tmp_path / "runs" / "k" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and sum("rerun of trial 1" in r for r in rows) == 1


def test_two_workers_share_a_study_on_postgresql(tmp_path: Path, tiny_model_dir: Path, postgres: str) -> None:
    tune = {"study": "pg", "trials": 4, "params": {"training.learning_rate": LR}}
    path = study_config(tmp_path, tiny_model_dir, tune, training={**SLOWER, "num_threads": 1})
    command = [sys.executable, "-m", "tunelab.cli", "tune", str(path), "--storage", postgres]
    workers = [subprocess.Popen([*command, "--seed", str(k)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True) for k in (1, 2)]  # fmt: skip
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = [t for t in trials_of("pg", postgres) if "surplus" not in t.user_attrs]
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    ran = [len(re.findall(r"^trial \d+:", o, re.MULTILINE)) for o in outputs]
    assert sum(ran) == 4 and all(n > 0 for n in ran)  # both workers took trials, none twice
    runs = sorted(p.name for p in (tmp_path / "runs" / "pg").glob("trial-*"))
    assert runs == [f"trial-{n:04d}" for n in range(4)]  # each trial trained once, in its own folder


def test_workers_flag_runs_local_worker_processes(tmp_path: Path, tiny_model_dir: Path) -> None:
    tune = {"study": "w", "trials": 3, "workers": 2, "params": {"training.learning_rate": LR}}
    path = study_config(tmp_path, tiny_model_dir, tune)
    done = tunelab("tune", str(path))
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "runs" / "w"
    trials = trials_of("w", f"sqlite:///{folder / 'study.db'}")
    assert sorted(t.number for t in trials if t.state == TrialState.COMPLETE) == [0, 1, 2]
    log = (folder / "worker-1.log").read_text()
    assert "trial " in log  # the second process took trials too
    assert (folder / "best.yaml").is_file() and "3 trials: 3 complete" in (folder / "trials.md").read_text()
