"""Run folders: where a run's files live, creating, replacing or reusing one, and the validated config a run was
trained with. (Loading a finished run's trained model is `tunelab.methods.trained.load_trained`.)

`output.overwrite` does not delete the old run when the new one starts: the old folder is moved aside
(`.replaced-NAME` beside it) and deleted once the new run has taken its first optimizer step, which is where a
run that cannot start fails (a wrong path, a model that does not load, the first step's memory); until then a
failure puts the old run back. (Waiting for the new run's first checkpoint instead would keep both on disk for
the whole run when `training.save_every` is unset.) A run killed outright in that window leaves the aside folder,
which the next start of the same run folder puts back before deciding again.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import RunError
from tunelab.methods.base import StepHook
from tunelab.methods.trained import CONFIG_FILE, is_run

REPLACED = ".replaced-"
_RECIPE_FILES = ("stages.yaml", "continual.yaml", "continual_state.json")


def run_path(cfg: TunelabConfig, config_path: Path | None) -> Path:
    """Where a run's folder is: output.dir / (output.name, or the config file's stem, or `run`)."""
    return Path(cfg.output.dir) / (cfg.output.name or (config_path.stem if config_path else "run"))


def is_run_folder(run_dir: Path) -> bool:
    """Whether `run_dir` is a folder tunelab wrote: one run (config.yaml), a run in stages or a continual run."""
    return is_run(run_dir) or any((run_dir / name).is_file() for name in _RECIPE_FILES)


def trained(run_dir: Path) -> bool:
    """Whether the run in `run_dir` (or a stage of it) got as far as training: a run that stopped before its
    first step, on a wrong data path say, holds nothing worth keeping."""
    folders = [run_dir, *(p for p in run_dir.iterdir() if p.is_dir())] if run_dir.is_dir() else []
    return any((f / "checkpoints").is_dir() or (f / "metrics.jsonl").is_file() for f in folders)


def run_folder(cfg: TunelabConfig, config_path: Path | None, resume: bool) -> Path:
    """The run's folder: created fresh, replaced (output.overwrite: the old one moved aside, see the module's
    note), or reused (resume). A resume of a run that has no checkpoint yet starts it again in its folder."""
    run_dir = run_path(cfg, config_path)
    restore_interrupted(run_dir)
    if resume:
        if not (run_dir / "checkpoints").is_dir() and not is_run_folder(run_dir):
            raise RunError(
                f"Cannot resume: '{run_dir}' has no checkpoints. Start the run without --resume, or point "
                "output.dir / output.name at the run you want to continue."
            )
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not is_run_folder(run_dir):
            raise RunError(
                f"'{run_dir}' exists and is not a tunelab run folder, so tunelab will not write into it. "
                "Choose another output.dir or output.name."
            )
        if trained(run_dir) and not cfg.output.overwrite:
            raise RunError(
                f"Run folder '{run_dir}' already exists. Continue it with --resume, choose another output.name, "
                "or set output.overwrite=true to replace it."
            )
        if trained(run_dir):
            run_dir.rename(aside(run_dir))
        else:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def aside(run_dir: Path) -> Path:
    """Where a run replaced by `output.overwrite` waits until the new run has started."""
    return run_dir.parent / f"{REPLACED}{run_dir.name}"


def restore_interrupted(run_dir: Path) -> None:
    """Put back a run that a replacing start moved aside and never dropped (that start was killed): when the
    folder now in its place never trained, the aside run is the one worth keeping; otherwise it is stale."""
    old = aside(run_dir)
    if not old.is_dir():
        return
    if run_dir.exists() and trained(run_dir):
        shutil.rmtree(old)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    old.rename(run_dir)


class ReplacedRun(StepHook):
    """The run an `output.overwrite` start moved aside (if any): deleted after the new run's first optimizer step
    (as a step hook, `hooks`) or by `drop`, or put back with `restore` when the new run fails before that."""

    def __init__(self, run_dir: Path, active: bool) -> None:
        self.run_dir = run_dir
        self.old = aside(run_dir)
        self.active = active and self.old.is_dir()

    @property
    def hooks(self) -> list[StepHook]:
        """The step hooks to train with: this one while an old run waits."""
        return [self] if self.active else []

    def on_step_end(self, step: int) -> None:
        self.drop()

    def drop(self) -> None:
        if self.active:
            shutil.rmtree(self.old, ignore_errors=True)
            self.active = False

    def restore(self) -> None:
        if self.active and self.old.is_dir():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.old.rename(self.run_dir)
        self.active = False


@contextlib.contextmanager
def replacing(run_dir: Path, main: bool = True) -> Iterator[ReplacedRun]:
    """Around a run that may have replaced an older one in `run_dir` (`run_folder` with output.overwrite): an
    exception before the old run was dropped puts it back; the end of the block drops it (a run that took no
    step). Only the main process (`main`) touches the folders."""
    replaced = ReplacedRun(run_dir, main)
    try:
        yield replaced
    except BaseException:
        replaced.restore()
        raise
    replaced.drop()


def resume_target(folder: Path) -> tuple[Path, dict[str, str]]:
    """For `tunelab train FOLDER --resume`: the config file the folder holds (config.yaml, stages.yaml or
    continual.yaml) and the overrides that make the run's folder this very folder, whatever output.dir and
    output.name the config says (unset name, a relative dir, a folder that was moved)."""
    folder = folder.resolve()
    for name in ("continual.yaml", "stages.yaml", CONFIG_FILE):
        if (folder / name).is_file():
            return folder / name, {"output.dir": str(folder.parent), "output.name": folder.name}
    raise RunError(
        f"Cannot resume '{folder}': it holds no run config ({CONFIG_FILE}, stages.yaml or continual.yaml). Give "
        "the run folder `tunelab train` wrote, or the config file the run was started with."
    )


def run_config(run_dir: Path) -> TunelabConfig:
    """The resolved config a run was trained with."""
    return load_config(run_dir / CONFIG_FILE)
