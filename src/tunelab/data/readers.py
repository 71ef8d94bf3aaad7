"""Read data files as a stream of raw rows with their line numbers: JSON Lines, JSON, CSV/TSV, Parquet, text.

A reader never decides whether a row is valid: it yields each row's payload (bytes of a JSON line, or an
already parsed dict) with the line it started on, and an error only when the row cannot even be cut out of
the file. Problems with the whole file (missing, binary, unreadable Parquet) are `FileProblem`s, so that
`tunelab data inspect` can report them per file and go on with the others.

Files are streamed (JSON Lines, CSV, text line by line, Parquet by row group), except JSON documents, which
must be read whole.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Literal, cast

FileType = Literal["jsonl", "json", "csv", "tsv", "parquet", "txt"]
SUFFIXES: dict[str, FileType] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".text": "txt",
    ".md": "txt",
}
TextUnit = Literal["line", "paragraph", "document"]
PREVIEW = 500


class FileProblem(Exception):
    """A whole file cannot be read; the message says why and what to do."""


@dataclass(slots=True)
class RawRow:
    """One row as cut out of a file: `payload` is the bytes/str of a JSON line or an already parsed value."""

    line: int
    """1-based line where the row starts (for Parquet: the 1-based row number)."""
    payload: Any
    size: int = 0
    """Characters (or bytes) of the row as written in the file, for the long-row policy; 0 when unknown."""
    error: str | None = None
    """Set when the row could not be cut out of the file (e.g. broken JSON inside a JSON list)."""
    forced_format: str | None = None
    """A format implied by the file type (a .txt line is always `text`)."""
    parsed: bool = False
    """True when `payload` is an already parsed value (JSON document, CSV, Parquet), not a line of text."""
    item: int | None = None
    """1-based position of the row in a JSON list (several rows share a line when the list is on one line)."""


class RawRows(list[RawRow]):
    """A chunk of rows on its way to a worker process. It pickles the usual row (a line with its number and size,
    nothing else set) as a plain tuple: a dataclass pickles with its field names, and on short chat rows sending
    a chunk to a worker and back took 10 µs a row that way against 4 µs as tuples."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpacked, ([(r.line, r.payload, r.size) if _is_plain(r) else r for r in self],))


def _is_plain(row: RawRow) -> bool:
    return row.error is None and row.forced_format is None and not row.parsed and row.item is None


def _unpacked(packed: list[tuple[int, Any, int] | RawRow]) -> RawRows:
    return RawRows(r if isinstance(r, RawRow) else RawRow(*r) for r in packed)


def preview(payload: Any) -> str:
    """The first 500 characters of a row, for rejects.jsonl (invalid UTF-8 shown as backslash escapes)."""
    if isinstance(payload, bytes):
        return payload[: PREVIEW * 4].decode("utf-8", "backslashreplace")[:PREVIEW]
    if isinstance(payload, str):
        return payload[:PREVIEW]
    try:
        return json.dumps(payload, ensure_ascii=False, default=str)[:PREVIEW]
    except (TypeError, ValueError):
        return repr(payload)[:PREVIEW]


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by `paths`: plain files, every supported file in a folder, or glob patterns, in order."""
    out: list[Path] = []
    for item in paths:
        text = str(item)
        if any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileProblem(f"The pattern '{text}' matches no file. Check the path in data.train.")
            out.extend(Path(m) for m in matches if Path(m).is_file())
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).rglob("*") if p.is_file() and file_type_of(p) is not None)
            if not found:
                raise FileProblem(f"The folder '{text}' holds no data file ({', '.join(SUFFIXES)}).")
            out.extend(found)
        else:
            out.append(Path(text))
    return out


def file_type_of(path: Path) -> FileType | None:
    """The file type from the name (`.jsonl`, `.csv.gz`, ...), or None when the suffix is unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


def sniff(path: Path) -> tuple[FileType, str | None]:
    """The file type to read `path` as, and the text encoding for text files; raises `FileProblem`.

    The content wins over the name where they disagree in a way that is certain (Parquet magic bytes, gzip).
    """
    if not path.exists():
        raise FileProblem(f"Data file '{path}' does not exist. Check the path in your config (data.train).")
    if not path.is_file():
        raise FileProblem(f"'{path}' is not a file.")
    with path.open("rb") as fh:
        head = fh.read(8192)
    if head[:4] == b"PAR1":
        return "parquet", None
    named = file_type_of(path)
    if named == "parquet":
        raise FileProblem(f"'{path}' is named .parquet but is not a Parquet file (no PAR1 magic bytes).")
    if head[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            head = fh.read(8192)
    encoding = "utf-8"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        encoding = "utf-16"
    elif b"\x00" in head:
        raise FileProblem(
            f"Data file '{path}' looks binary (it contains NUL bytes), not JSON Lines, JSON, CSV, Parquet or text. "
            "Check that the path names the data file."
        )
    if named is None:
        first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        named = "jsonl" if first == b"{" else "json" if first == b"[" else "txt"
    return named, encoding


def read_rows(path: Path, *, text_unit: TextUnit = "line") -> Iterator[RawRow]:
    """Every row of one file, in order. Raises `FileProblem` before the first row when the file is unreadable."""
    kind, encoding = sniff(path)
    if kind == "parquet":
        return _parquet(path)
    if kind == "jsonl":
        rows = _jsonl(path, encoding)
    elif kind == "json":
        rows = _json(path, encoding)
    elif kind in ("csv", "tsv"):
        rows = _csv(path, encoding, "\t" if kind == "tsv" else None)
    else:
        rows = _text(path, encoding, text_unit)
    return _guarded(rows)


def _guarded(rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """Rows until the file cannot be read any further (a cut-off gzip stream, a disk error): then one error row
    says so, instead of an exception that would lose the rows already counted."""
    last = 0
    try:
        for row in rows:
            last = row.line
            yield row
    except (OSError, EOFError, zlib.error) as exc:
        yield RawRow(line=last + 1, payload="", error=f"the file cannot be read from here on ({exc})")


def _open_binary(path: Path) -> gzip.GzipFile | io.BufferedReader:
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")


def _binary_lines(path: Path, encoding: str | None) -> Iterator[tuple[int, bytes | str]]:
    """(line number, line) with the BOM and line ending removed; lines stay bytes for UTF-8 files so that
    invalid UTF-8 is found per line, not per file."""
    if encoding == "utf-16":
        with _open_binary(path) as fh:
            text = fh.read().decode("utf-16", errors="replace")
        for number, line in enumerate(text.split("\n"), start=1):
            yield number, line.rstrip("\r")
        return
    with _open_binary(path) as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            yield number, line.rstrip(b"\r\n")


def _jsonl(path: Path, encoding: str | None) -> Iterator[RawRow]:
    for number, line in _binary_lines(path, encoding):
        if line.strip():
            yield RawRow(line=number, payload=line, size=len(line))


def _decoded(path: Path, encoding: str | None) -> str:
    with _open_binary(path) as fh:
        raw = fh.read()
    if encoding == "utf-16":
        return raw.decode("utf-16", errors="replace")
    # surrogateescape keeps invalid bytes visible (as lone surrogates) so the row holding them can be rejected.
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


_WS = re.compile(r"\s*")


def _skip_space(text: str, pos: int = 0) -> int:
    """The index of the first non-space character at or after `pos` (`len(text)` when there is none)."""
    match = _WS.match(text, pos)
    assert match is not None  # `\s*` matches anywhere, if only the empty string
    return match.end()


def _json(path: Path, encoding: str | None) -> Iterator[RawRow]:
    text = _decoded(path, encoding)
    start = _skip_space(text)
    if start == len(text):
        return
    if text[start] == "[":
        yield from _json_list(text, start)
        return
    try:
        value = json.loads(text)
    except RecursionError:
        yield RawRow(line=1, payload=text[:PREVIEW], error="malformed JSON (nested too deeply)")
        return
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" or _is_object(text[start:].split("\n", 1)[0]):
            # Several objects one after another: JSON Lines under a .json name.
            for number, line in enumerate(text.split("\n"), start=1):
                if line.strip():
                    yield RawRow(line=number, payload=line.rstrip("\r"), size=len(line))
            return
        yield RawRow(line=exc.lineno, payload=text[:PREVIEW], error=f"malformed JSON ({exc.msg} at line {exc.lineno})")
        return
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        known = {"messages", "conversations", "preferred_output", "non_preferred_output", "chosen", "rejected"}
        if len(lists) == 1 and not (set(value) & known):
            # {"data": [rows...]}: a wrapper object around the list of rows.
            match = re.search(re.escape(json.dumps(lists[0])) + r"\s*:\s*\[", text)
            if match is not None:
                yield from _json_list(text, match.end() - 1)
                return
    yield RawRow(line=text.count("\n", 0, start) + 1, payload=value, size=len(text), parsed=True)


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _json_list(text: str, start: int) -> Iterator[RawRow]:
    """The elements of the JSON list that opens at `text[start]`, each with its line; a broken element becomes
    one error row and reading resumes at the next element (found by its indentation in pretty-printed files)."""
    decoder = json.JSONDecoder()
    pos, line, counted = start + 1, 1 + text.count("\n", 0, start), start
    opened = line
    indent: str | None = None
    item = 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text):
            # The rows read so far are kept, and the missing end is a reject of its own: a file cut off while it
            # was written or copied must not pass for a complete one.
            yield RawRow(
                line=line_at(len(text.rstrip())),
                payload=text[-PREVIEW:],
                error=f"the JSON list opened on line {opened} is never closed (no ']' "
                "before the end of the file): the file looks cut off. Check that it was written or copied completely",
            )
            return
        if text[pos] == "]":
            return
        if text[pos] == ",":  # a stray or trailing comma: nothing is lost by skipping it
            pos += 1
            continue
        if indent is None:
            line_start = text.rfind("\n", 0, pos) + 1
            indent = text[line_start:pos] if not text[line_start:pos].strip() and line_start > start else ""
        row_line = line_at(pos)
        item += 1
        try:
            value, end = decoder.raw_decode(text, pos)
        except RecursionError:
            yield RawRow(
                line=row_line,
                payload=text[pos : pos + PREVIEW],
                error="malformed JSON (nested too deeply); the rest of the list could not be read",
                item=item,
            )
            return
        except json.JSONDecodeError as exc:
            resume = _next_element(text, pos, indent)
            error = f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            if resume is None:
                error += "; the rest of the list could not be read"
            yield RawRow(line=row_line, payload=text[pos : pos + PREVIEW], error=error, item=item)
            if resume is None:
                return
            pos = resume
            continue
        yield RawRow(line=row_line, payload=value, size=end - pos, parsed=True, item=item)
        pos = end


def _next_element(text: str, after: int, indent: str | None) -> int | None:
    """Where the list element after a broken one starts: the next '{' at the first element's indentation on a
    line of its own (pretty-printed), else the next '{' after a comma (one-line lists)."""
    if indent:
        match = re.compile(r"\n" + re.escape(indent) + r"\{").search(text, after + 1)
        return match.end() - 1 if match else None
    match = re.compile(r"\n\{|\}\s*,\s*\{").search(text, after + 1)
    return match.end() - 1 if match else None


def _csv(path: Path, encoding: str | None, delimiter: str | None) -> Iterator[RawRow]:
    text_stream = io.TextIOWrapper(
        _open_binary(path),
        encoding="utf-16" if encoding == "utf-16" else "utf-8-sig",
        errors="replace" if encoding == "utf-16" else "surrogateescape",
        newline="",
    )
    with text_stream:
        first = text_stream.readline()
        if not first.strip():
            return
        if delimiter is None:
            # A header with semicolons and no commas is the European CSV dialect.
            delimiter = ";" if first.count(";") > first.count(",") else ","
        csv.field_size_limit(1 << 30)
        lines = _Lines(chain([first], text_stream))
        reader = csv.reader(lines, delimiter=delimiter)
        names = _header(path, next(reader))
        number = 1 + len(lines.taken)  # the line the next record starts on
        while True:
            lines.taken.clear()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problem: str | None = f"unreadable CSV row ({exc})"
            else:
                problem = None
                if cells and len(cells) != len(names):
                    problem = f"the row has {len(cells)} fields but the header has {len(names)} ({', '.join(names)})"
            start, span = number, len(lines.taken)
            if problem is not None and span > 1 and '"' in lines.taken[0]:
                # A quote that never closes swallows the lines after it into one field (to the end of the file,
                # or to the next stray quote): only its own line is rejected, the lines after it are read again.
                lines.push_back(lines.taken[1:])
                problem = (
                    f"a quoted field opening on this line runs over {span} lines and the row it makes is broken: "
                    f"{problem}; is a closing quote missing? The lines after this one are read as rows of their own"
                )
                span = 1
            number += span
            if problem is not None:
                yield RawRow(line=start, payload="".join(lines.taken[:span]).rstrip("\r\n"), error=problem)
                continue
            if not cells or not any(c.strip() for c in cells):
                continue
            raw = delimiter.join(cells)
            # An empty cell is a missing value, as it would be in JSON.
            row = {n: c for n, c in zip(names, cells, strict=True) if c != ""}
            yield RawRow(line=start, payload=row, size=len(raw), parsed=True)


class _Lines:
    """The physical lines under a `csv.reader`: it remembers the lines of the current record (`taken`) and can
    give lines back, to be read again after a record turned out to be broken."""

    def __init__(self, source: Iterator[str]) -> None:
        self.source = source
        self.pending: deque[str] = deque()
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.pending.popleft() if self.pending else next(self.source)
        self.taken.append(line)
        return line

    def push_back(self, lines: Sequence[str]) -> None:
        self.pending.extendleft(reversed(lines))


def _header(path: Path, header: list[str]) -> list[str]:
    """Column names of a CSV header (an empty name becomes `column_N`); a name used twice is a file problem,
    since either column could be the one meant."""
    names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise FileProblem(
                f"CSV file '{path}': columns {seen[name]} and {i} of the header are both named '{name}', so a row "
                "cannot say which one it means. Rename one of them in the header line."
            )
        seen[name] = i
    return names


def _parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise FileProblem(
            f"Parquet file '{path}' cannot be read: {str(exc).rstrip('.')}. Re-export it, or convert it to JSON Lines."
        ) from None
    return _parquet_rows(path, parquet)


def _parquet_rows(path: Path, parquet: Any) -> Iterator[RawRow]:
    import pyarrow as pa

    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=2048):
            for row in batch.to_pylist():
                number += 1
                yield RawRow(line=number, payload=row, parsed=True)
    except pa.ArrowException as exc:
        yield RawRow(line=number + 1, payload="", error=f"unreadable Parquet data from this row on ({exc})")


def _text(path: Path, encoding: str | None, unit: TextUnit) -> Iterator[RawRow]:
    """Plain text for continued pretraining: one row per line, per blank-line-separated paragraph, or per file."""
    block: list[bytes | str] = []
    block_start = 0
    for number, line in _binary_lines(path, encoding):
        if unit == "line":
            if line.strip():
                yield RawRow(line=number, payload=line, size=len(line), forced_format="text")
            continue
        if unit == "paragraph" and not line.strip():
            if block:
                yield _text_block(block_start, block)
            block = []
            continue
        if not block:
            block_start = number
        block.append(line)
    if block and any(b.strip() for b in block):
        yield _text_block(block_start, block)


def _text_block(start: int, lines: list[bytes | str]) -> RawRow:
    # A file's lines are all bytes (UTF-8, split undecoded) or all str (UTF-16, decoded whole), never mixed.
    if isinstance(lines[0], bytes):
        joined: bytes | str = b"\n".join(cast(list[bytes], lines))
    else:
        joined = "\n".join(cast(list[str], lines))
    return RawRow(line=start, payload=joined, size=len(joined), forced_format="text")
