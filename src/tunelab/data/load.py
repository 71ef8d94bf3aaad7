"""Read data files into `Example`s. Every row becomes an example or a `Reject` with file, line, field and reason.

`stream_files` is the streaming core (chunks of rows, optionally converted on several processes);
`load_examples` collects everything into lists for callers that want them in memory.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal

from tunelab.core.errors import DataError
from tunelab.data.formats import RowError, convert, detect_file
from tunelab.data.parallel import bounded_map, chunked
from tunelab.data.readers import FileProblem, RawRow, RawRows, TextUnit, expand_paths, preview, read_rows, sniff
from tunelab.data.records import Example, Reject

DETECT_ROWS = 100
"""Rows read ahead of a file to detect its format (the most common format among them wins)."""
CHUNK_ROWS = 2000


@dataclass(frozen=True)
class LoadOptions:
    """How rows are read and validated (the load-related `data.*` config fields)."""

    format: str = "auto"
    formats: dict[str, str] = field(default_factory=dict)
    """Per-file formats, by file name or stem; they win over `format`."""
    text_unit: TextUnit = "line"
    max_row_chars: int = 1_000_000
    long_rows: Literal["reject", "truncate"] = "reject"
    task: str | None = None
    """Task tag for every record; default: the file's stem (a row's own `task` field wins)."""
    difficulty_field: str | None = None
    """A row field that must hold a number, kept as the record's curriculum difficulty."""


@dataclass
class FileInfo:
    """What was found in one file, for the report."""

    path: str
    file_type: str = ""
    format: str = "unknown"
    """The format rows were read as (detected or given); `empty` for a file with no rows."""
    rows: int = 0
    kept: int = 0
    rejected: int = 0
    truncated: int = 0
    problem: str | None = None
    """Why the whole file could not be read (missing, binary, ...); its rows are then not counted."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class LoadResult:
    examples: list[Example] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    files: dict[str, FileInfo] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.examples) + len(self.rejects)

    @property
    def formats(self) -> dict[str, str]:
        """Detected (or given) format of each file."""
        return {path: info.format for path, info in self.files.items()}


def load_examples(
    paths: Sequence[str | Path], fmt: str = "auto", *, options: LoadOptions | None = None, keep_going: bool = False
) -> LoadResult:
    """Read files into memory. A file that cannot be read at all is a `DataError` (or, with `keep_going`, a
    `FileInfo.problem`); a bad row is a `Reject`."""
    options = options or LoadOptions(format=fmt)
    result = LoadResult()
    for info, items in stream_files(paths, options, keep_going=keep_going):
        result.files[info.path] = info
        for item in items:
            if isinstance(item, Reject):
                result.rejects.append(item)
            else:
                result.examples.append(item)
    return result


def stream_files(
    paths: Sequence[str | Path],
    options: LoadOptions,
    *,
    keep_going: bool = False,
    num_proc: int = 1,
    then: Callable[[list[Example | Reject]], Any] | None = None,
) -> Iterator[tuple[FileInfo, Iterator[Any]]]:
    """For each file: its `FileInfo` (complete once the iterator is used up) and an iterator over the converted
    rows, chunk by chunk. `then`, when given, runs on each chunk's list in the worker (cleaning, hashing) and
    the iterator yields its results instead of single rows."""
    try:
        files = expand_paths(paths)
    except FileProblem as exc:
        raise DataError(str(exc)) from None
    for path in files:
        # A file name that is not valid UTF-8 is shown with escapes (it must fit in Arrow strings and JSON).
        info = FileInfo(path=str(path).encode("utf-8", "backslashreplace").decode())
        try:
            chunks, file_format, info.file_type = _open(path, options)
        except FileProblem as exc:
            if not keep_going:
                raise DataError(str(exc)) from None
            info.problem, info.format = str(exc), "unreadable"
            yield info, iter(())
            continue
        info.format = file_format or "empty"
        task = options.task or Path(info.path).stem
        work = partial(_convert_chunk, path=info.path, file_format=file_format, options=options, task=task, then=then)
        yield info, _counted(bounded_map(work, chunks, num_proc), info, flat=then is None)


def _open(path: Path, options: LoadOptions) -> tuple[Iterator[list[RawRow]], str | None, str]:
    file_type, _ = sniff(path)
    rows = read_rows(path, text_unit=options.text_unit)
    head = list(islice(rows, DETECT_ROWS))
    given = options.formats.get(path.name, options.formats.get(path.stem, options.format))
    if given != "auto":
        file_format = given
    elif file_type == "txt":
        file_format = "text"
    else:
        parsed = []
        for raw in head:
            with contextlib.suppress(RowError):
                parsed.append(_parse(raw))
        file_format = detect_file(parsed)
    if file_format is None and head:
        file_format = "unknown"
    return (RawRows(c) for c in chunked(chain(head, rows), CHUNK_ROWS)), file_format, file_type


def _counted(results: Iterator[tuple[Any, dict[str, int]]], info: FileInfo, flat: bool) -> Iterator[Any]:
    for payload, counts in results:
        info.rows += counts["rows"]
        info.kept += counts["kept"]
        info.rejected += counts["rejected"]
        info.truncated += counts["truncated"]
        if flat:
            yield from payload
        else:
            yield payload


def _convert_chunk(
    rows: list[RawRow], *, path: str, file_format: str | None, options: LoadOptions, task: str, then: Callable | None
) -> tuple[Any, dict[str, int]]:
    out: list[Example | Reject] = []
    counts = {"rows": len(rows), "kept": 0, "rejected": 0, "truncated": 0}
    fmt = None if file_format in (None, "unknown") else file_format
    for raw in rows:
        origin = f"{path}:{raw.line}"
        try:
            example = _example(raw, origin, fmt, options, task)
            if example.meta.get("truncated"):
                counts["truncated"] += 1
            counts["kept"] += 1
            out.append(example)
        except RowError as exc:
            counts["rejected"] += 1
            reason = str(exc) if raw.item is None else f"{exc}; element {raw.item} of the JSON list"
            out.append(Reject(origin=origin, reason=reason, row=preview(raw.payload), field=exc.field))
    return (then(out) if then is not None else out), counts


def _parse(raw: RawRow) -> Any:
    """The row's value: parse a JSON line (or wrap a text line), checking its encoding first."""
    if raw.error is not None:
        raise RowError(raw.error)
    if raw.parsed:
        return raw.payload
    text = raw.payload
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowError(
                f"the line is not valid UTF-8 (byte 0x{text[exc.start]:02x} at column {exc.start + 1})"
            ) from None
    if raw.forced_format == "text":
        return {"text": text}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RowError("malformed JSON (nested too deeply)") from None


def _example(raw: RawRow, origin: str, fmt: str | None, options: LoadOptions, task: str) -> Example:
    value = _parse(raw)
    if raw.forced_format:  # a line of a .txt file is text whatever data.format says
        fmt = raw.forced_format
    example = convert(value, origin, fmt)
    size = 0
    labelled = [("label", example.label)] if example.label is not None else []
    for name, text in [*example.texts(), *labelled]:
        size += len(text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RowError(f"field '{name}' is not valid UTF-8 (at character {exc.start + 1})", name) from None
    if size > options.max_row_chars:
        if options.long_rows == "reject":
            raise RowError(
                f"the row holds {size:,} characters, more than data.max_row_chars={options.max_row_chars:,} "
                "(data.long_rows=reject; set it to truncate to keep such rows cut short)"
            )
        limit = options.max_row_chars
        example = example.map_texts(lambda s: s[:limit])
        example.meta["truncated"] = size
    if options.difficulty_field:
        example.meta["difficulty"] = _difficulty(value, options.difficulty_field)
    row_task = value.get("task") if isinstance(value, dict) else None
    if isinstance(row_task, str) and row_task.strip():
        try:
            row_task.encode("utf-8")
        except UnicodeEncodeError:
            raise RowError("field 'task' is not valid UTF-8", "task") from None
        example.task = row_task
    else:
        example.task = task
    return example


def _difficulty(row: Any, name: str) -> float:
    value = row.get(name) if isinstance(row, dict) else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RowError(f"field '{name}' must be a number (data.schedule.difficulty=field), got {value!r}", name)
    return float(value)


def check_bad_fraction(result: LoadResult, limit: float, rejects_file: Path | None) -> None:
    """Abort when too many rows were rejected: that is a wrong format or a broken file, not noise."""
    check_counts(result.rows, len(result.rejects), result.rejects[:3], limit, rejects_file)


def check_counts(rows: int, rejected: int, first: list[Reject], limit: float, rejects_file: Path | None) -> None:
    """`check_bad_fraction` on counts (for streamed data, where only the first rejects are kept in memory)."""
    if rows == 0:
        raise DataError("The data files hold no rows at all. Check the paths in data.train / data.validation.")
    if rejected == rows or rejected / rows > limit:
        shown = "; ".join(f"{r.origin}: {r.reason}" for r in first)
        where = f" All rejects are in {rejects_file}." if rejects_file else ""
        raise DataError(
            f"{rejected} of {rows} rows were rejected, more than data.max_bad_fraction={limit}. First problems: "
            f"{shown}.{where} Fix those rows, choose the right data.format, or raise data.max_bad_fraction to "
            "train on the good rows."
        )


__all__ = ["FileInfo", "LoadOptions", "LoadResult", "check_bad_fraction", "load_examples", "stream_files"]
