"""Durable, atomic file writing: write beside the target, fsync the file, rename it into place, fsync the folder.

A rename alone is atomic but not durable: after a power loss the new name can point at a file whose blocks never
reached the disk (an empty or truncated file that looks complete). So every file is fsynced before its rename and
the folder after it. A full disk during a write becomes a `DiskFullError` that names the file and says how much
space is free and how much the write needed, and the temporary file or folder is removed, so what was there
before is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from tunelab.core.errors import DiskFullError

_FULL = (errno.ENOSPC, errno.EDQUOT)
# Libraries that write in native code (safetensors, torch's zip writer) raise their own exception types and keep
# the OS error only in the message.
_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or the exception that caused it) is the OS saying the disk or the quota is full."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if any(text in str(exc) for text in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def file_digest(path: Path) -> str:
    """A digest of the file's contents ("missing" when there is no such file)."""
    if not path.is_file():
        return "missing"
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def size_text(n: float) -> str:
    """`n` bytes for a person: 512 B, 3.2 MB, 1.5 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def disk_full_message(target: Path, what: str, needed: int | None, then: str = "") -> str:
    """The one-paragraph message of a `DiskFullError`: which file, free vs needed, and what to do once space is
    freed (`then`, default: run the command again), which says what is intact."""
    free = free_bytes(target)
    need = f"needs about {size_text(needed)}" if needed else "ran out of space"
    return (
        f"No space left on the disk holding '{target}': writing {what} {need} and {size_text(free)} are free. "
        f"Free some space (or write to a larger disk), then {then or 'run the command again.'}"
    )


def ensure_space(target: Path, needed: int, what: str, then: str = "") -> None:
    """Raise `DiskFullError` before writing when the disk holding `target` has less than `needed` bytes free."""
    if free_bytes(target) < needed:
        raise DiskFullError(disk_full_message(target, what, needed, then))


@contextlib.contextmanager
def disk_full_as_error(target: Path, what: str, needed: int | None = None, then: str = "") -> Iterator[None]:
    """Inside, an exception caused by a full disk becomes a `DiskFullError` naming `target`; others pass."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(target, what, needed, then)) from None
        raise


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the names in folder `path` (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, and `root` itself."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def write_bytes(path: Path, data: bytes, what: str | None = None, then: str = "") -> None:
    """Write `data` to `path` atomically and durably (the old file stays whole until the new one replaces it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with disk_full_as_error(path, what or f"'{path.name}'", len(data), then):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str, what: str | None = None, then: str = "") -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode(), what, then)


@contextlib.contextmanager
def replacing_dir(target: Path, what: str | None = None, then: str = "") -> Iterator[Path]:
    """Yield an empty temporary folder beside `target` to write into; when the block ends without an exception,
    the folder is fsynced and renamed to `target` (an existing `target` is moved aside first and deleted after).
    On an exception the temporary folder is removed and `target` is left as it was; a full disk is a
    `DiskFullError`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".tmp-{target.name}-{tag}")
    old = target.with_name(f".old-{target.name}-{tag}")
    tmp.mkdir()
    try:
        with disk_full_as_error(target, what or f"'{target.name}'", None, then):
            yield tmp
            fsync_tree(tmp)
            if target.exists():
                target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                if old.exists():
                    old.rename(target)
                raise
            fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove what an interrupted write left in `folder` (`.tmp-*` folders, `.*.tmp` files, `.old-*` folders
    whose replacement is in place); return what was removed."""
    if not folder.is_dir():
        return []
    removed = []
    for item in folder.iterdir():
        name = item.name
        leftover = name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))
        replaced = name.startswith(".old-") and (folder / name[len(".old-") :].rsplit("-", 1)[0]).exists()
        if leftover or replaced:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed.append(item)
    return removed
