"""Errors a user can cause. The CLI prints them as one paragraph, without a traceback, and exits 2.

Anything else that escapes is a bug in tunelab and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TunelabError(Exception):
    """A mistake the user can fix: the message says what was wrong, where, and how to fix it."""

    exit_code = 2


class ConfigError(TunelabError):
    """A config key or value is wrong."""


class DataError(TunelabError):
    """A data file is missing, unreadable, or has too many bad rows."""


class ModelError(TunelabError):
    """A model source cannot be found or loaded."""


class RunError(TunelabError):
    """A run folder is missing, incomplete, or cannot be resumed."""


class RunStopped(TunelabError):
    """The run was asked to stop (SIGTERM) and stopped at a step boundary with its checkpoint saved.

    Exits 143 (128 + SIGTERM), as a process ended by that signal would, so a scheduler or the dashboard tells a
    stopped run from a finished (0) or failed (2) one."""

    exit_code = 143


class DiskFullError(TunelabError):
    """A write ran out of disk space; the message names the file, the space free and needed, and what is intact."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
