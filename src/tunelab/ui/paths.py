"""Every path the browser names is resolved and checked to lie inside the folders the dashboard was given: the
runs folder (and, for data and models a form names, the extra folders of `--data-dir`). `..`, absolute paths and
symlinks pointing out are refused alike, because the check is on the resolved path."""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.core.errors import TunelabError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A new run's folder name: one path component, no dot first (dot folders are the dashboard's own)."""


class PathRefused(TunelabError):
    """A path from the browser leaves the folders the dashboard may read or write."""


def inside(root: Path, relative: str) -> Path:
    """`root / relative` resolved, refused unless it stays inside `root` (symlinks followed)."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise PathRefused(
            f"'{relative}' is outside the runs folder; the dashboard reads and writes only inside {base}."
        )
    return target


def within_any(roots: list[Path], path: str) -> Path:
    """`path` (absolute, or relative to the first root) resolved, refused unless it lies inside one of `roots`."""
    candidate = Path(path).expanduser()
    target = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    for root in roots:
        base = root.resolve()
        if target == base or base in target.parents:
            return target
    allowed = ", ".join(str(r.resolve()) for r in roots)
    raise PathRefused(f"'{path}' is outside the folders this dashboard may read ({allowed}); start `tunelab ui` "
                      "with --data-dir naming the folder that holds it.")  # fmt: skip


def check_run_name(name: str) -> str:
    """A new run's name, refused unless it is one plain folder name."""
    if not RUN_NAME.match(name):
        raise PathRefused(
            f"Run name '{name}' is not a plain folder name: use letters, digits, '.', '_' and '-' (at most 100, not "
            "starting with '.')."
        )
    return name
