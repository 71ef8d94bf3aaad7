"""A real small filesystem for full-disk tests: a size-limited tmpfs mounted by the test (needs root)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "4m") at `path` for the block; skip the test when mounting is not
    permitted (not root, or a container without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("full-disk test: no `mount` command on this machine")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"full-disk test: mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` with one file until about `leave` bytes stay free (to the filesystem's block); return the
    file, which the test deletes to free the space again."""
    filler = disk / "filler.bin"
    remaining = max(shutil.disk_usage(disk).free - leave, 0)
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):  # full: as much as fitted
        while remaining > 0:
            remaining -= fh.write(chunk[: min(len(chunk), remaining)])
    return filler
