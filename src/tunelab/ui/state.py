"""The dashboard's settings and state, shared by the app and the start-a-run code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.ui.chat import ChatPlayground
from tunelab.ui.downsample import MAX_POINTS
from tunelab.ui.jobs import Jobs
from tunelab.ui.runs_index import RunsIndex


@dataclass
class Settings:
    """What the dashboard serves and who may use it."""

    runs: Path
    data_dirs: list[Path] = field(default_factory=list)
    """Folders besides the runs folder whose files a started run may read (data, models)."""
    token: str | None = None
    max_points: int = MAX_POINTS

    @property
    def readable(self) -> list[Path]:
        return [self.runs, *self.data_dirs]


@dataclass
class Dashboard:
    """The app's state: settings, the runs index, the jobs it started and the chat playground."""

    settings: Settings
    index: RunsIndex
    jobs: Jobs
    chat: ChatPlayground

    @classmethod
    def open(cls, settings: Settings) -> Dashboard:
        root = settings.runs.resolve()
        return cls(settings, RunsIndex(root), Jobs(root), ChatPlayground())

    def close(self) -> None:
        """Unload the chat model. Training processes keep running: a run outlives the dashboard that started it."""
        self.chat.close()
