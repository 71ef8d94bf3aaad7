"""Read data files into `Example`s. Every row becomes an example or a `Reject` with file, line and reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.formats import FORMATS, RowError, detect
from tunelab.data.records import Example, Reject
from tunelab.errors import DataError


@dataclass
class LoadResult:
    examples: list[Example] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    """Detected (or given) format of each file."""

    @property
    def rows(self) -> int:
        return len(self.examples) + len(self.rejects)


def load_examples(paths: list[str | Path], fmt: str = "auto") -> LoadResult:
    """Read JSONL files; a file that cannot be read at all is a `DataError`, a bad row is a `Reject`."""
    result = LoadResult()
    for path in map(Path, paths):
        _load_file(path, fmt, result)
    return result


def check_bad_fraction(result: LoadResult, limit: float, rejects_file: Path | None) -> None:
    """Abort when too many rows were rejected: that is a wrong format or a broken file, not noise."""
    if result.rows == 0:
        raise DataError("The data files hold no rows at all. Check the paths in data.train / data.validation.")
    if not result.examples or len(result.rejects) / result.rows > limit:
        shown = "; ".join(f"{r.origin}: {r.reason}" for r in result.rejects[:3])
        where = f" All rejects are in {rejects_file}." if rejects_file else ""
        raise DataError(
            f"{len(result.rejects)} of {result.rows} rows were rejected, more than data.max_bad_fraction="
            f"{limit}. First problems: {shown}.{where} Fix those rows, choose the right data.format, or raise "
            "data.max_bad_fraction to train on the good rows."
        )


def _load_file(path: Path, fmt: str, result: LoadResult) -> None:
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Check the path in your config (data.train).")
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"Data file '{path}' looks binary (it contains NUL bytes). Give a JSONL text file.")
    # utf-8-sig drops a byte-order mark; splitlines handles CRLF.
    text = raw.decode("utf-8-sig", errors="replace")
    detected = None if fmt == "auto" else fmt
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            if "\ufffd" in line:
                raise RowError("the line is not valid UTF-8")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
            row_format = detected or detect(row)
            if row_format is None:
                raise RowError(f"unknown row format (keys: {', '.join(sorted(row)) or 'none'})")
            detected = detected or row_format
            result.examples.append(FORMATS[row_format](row, origin))
        except RowError as exc:
            result.rejects.append(Reject(origin=origin, reason=str(exc), row=line[:500]))
    result.formats[str(path)] = detected or "unknown"
