"""Training runs the dashboard starts, stops and resumes: each is the process `tunelab train` would be
(`python -m tunelab.cli train ...`), writing the same run folder.

The dashboard's own bookkeeping lives beside the runs, in `RUNS/.tunelab-ui/` (the run folder itself must hold
only what `tunelab train` writes, or a fresh start would refuse it): per run a job record (pid, command, state,
exit code) and the process's output log. A stop sends SIGTERM to the run's process group; the run resumes from its
newest checkpoint (`training.save_every`), as a killed `tunelab train` does. One run name has at most one process:
a second start or resume of a running name is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.core.errors import TunelabError

STATE_DIR = ".tunelab-ui"


class JobError(TunelabError):
    """A start, stop or resume the dashboard refuses (the run is already running, or is not running)."""


@dataclass
class JobRecord:
    """What the dashboard knows about the last process it started for one run."""

    name: str
    pid: int
    command: list[str]
    started: float
    state: str = "running"
    """running, finished (exit 0), stopped (by the dashboard) or failed (any other exit)."""
    returncode: int | None = None
    ended: float | None = None
    stop_requested: bool = False
    log: str = ""

    def alive(self) -> bool:
        """Whether the process still runs (its record says running and the pid answers)."""
        if self.state != "running":
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(self.pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def _record_path(root: Path, name: str) -> Path:
    return state_dir(root) / "jobs" / (name.replace("/", "__") + ".json")


def log_path(root: Path, name: str) -> Path:
    """The output (stdout and stderr) of the run's latest process."""
    return state_dir(root) / "logs" / (name.replace("/", "__") + ".log")


def has_record(root: Path, name: str) -> bool:
    """Whether the dashboard started a process for run `name`."""
    return _record_path(root, name).is_file()


def read_record(root: Path, name: str) -> JobRecord | None:
    """The run's job record, or None (never started from the dashboard, or the record is unreadable)."""
    try:
        doc = json.loads(_record_path(root, name).read_text(encoding="utf-8"))
        return JobRecord(**doc)
    except (OSError, ValueError, TypeError):
        return None


def _write_record(root: Path, record: JobRecord) -> None:
    path = _record_path(root, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def train_command(args: list[str]) -> list[str]:
    """The command line of a training process: this Python running tunelab's CLI."""
    return [sys.executable, "-m", "tunelab.cli", "train", *args]


class Jobs:
    """The processes this dashboard started; a waiter thread per process records how it ended."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()

    def running(self, name: str) -> bool:
        record = read_record(self.root, name)
        return record is not None and record.alive()

    def start(self, name: str, args: list[str]) -> JobRecord:
        """Start `tunelab train ARGS` for run `name`; refused while a process of that name runs."""
        with self._lock:
            if self.running(name):
                raise JobError(f"Run '{name}' is already running; stop it first, or start the new run under another "
                               "name.")  # fmt: skip
            log = log_path(self.root, name)
            log.parent.mkdir(parents=True, exist_ok=True)
            command = train_command(args)
            with log.open("ab") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.root, start_new_session=True)  # fmt: skip
            record = JobRecord(name, proc.pid, command, time.time(), log=str(log))
            _write_record(self.root, record)
        threading.Thread(target=self._wait, args=(name, proc), name=f"tunelab-ui-job-{name}", daemon=True).start()
        return record

    def stop(self, name: str, timeout: float = 0.0) -> JobRecord:
        """SIGTERM to the run's process group; with `timeout`, wait that long for it to end."""
        record = read_record(self.root, name)
        if record is None or not record.alive():
            raise JobError(f"Run '{name}' is not running, so there is nothing to stop.")
        record.stop_requested = True
        _write_record(self.root, record)
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and record.alive():
            time.sleep(0.05)
        return read_record(self.root, name) or record

    def _wait(self, name: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            record = read_record(self.root, name)
            if record is None or record.pid != proc.pid:
                return
            record.returncode, record.ended = code, time.time()
            record.state = "finished" if code == 0 else "stopped" if record.stop_requested else "failed"
            _write_record(self.root, record)
