"""Stage one of preparing data, shared by `data inspect` and `data prepare`: read, validate and clean every
file, streaming, and keep per record only what deduplication needs later (a content hash and MinHash band
keys, on disk) next to the cleaned records (an Arrow file, memory-mapped when read back).

Memory stays flat in the number of rows: rows flow through in chunks, rejects and removed rows are written
out as they come, and the only per-row state is 8 bytes of hash in memory plus 8 bytes per LSH band on disk.
"""

from __future__ import annotations

import json
import mmap
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from tunelab.core.types import Message
from tunelab.data.clean import Cleaner, CleanStats
from tunelab.data.config import CleanSection
from tunelab.data.dedup import (
    MinHasher,
    ShingleSets,
    band_keys,
    distinct,
    exact_duplicates,
    exact_hash,
    holding,
    near_duplicates,
    near_form,
    near_text,
    optimal_bands,
    ranges,
    shingle_batch,
    verified_pairs,
)
from tunelab.data.load import FileInfo, LoadOptions, stream_files
from tunelab.data.parallel import chunked
from tunelab.data.records import TEXT_FIELDS, Example, JsonlWriter, Reject, Removed

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("trainable", pa.bool_())])
SCHEMA = pa.schema(
    [("messages", pa.list_(MESSAGE)), ("origin", pa.string()), ("meta", pa.string()), ("kind", pa.string())]
    + [(name, pa.string()) for name in ("text", "text_pair", "chosen", "rejected", "anchor", "positive", "negative")]
    + [("label", pa.string()), ("task", pa.string()), ("synthetic", pa.bool_())]
)
"""Arrow schema of canonical records (`Example.to_row()`)."""
RELEASE_EVERY = 256
"""Random row reads between releases of the mapped record pages. Each read maps in about 200 KB: the kernel
maps the neighbours of a faulting page too when they are in the page cache (fault-around, 64 KB), once per
column buffer touched; so this bounds the mapped pages at ~50 MB whatever the file size."""


def records_batch(examples: Sequence[Example]) -> pa.RecordBatch:
    """`examples` as a record batch of `SCHEMA`, built column by column: the same batch as
    `RecordBatch.from_pylist([e.to_row() ...])` at about half its cost (3.5 against 7 µs a short chat row)."""
    messages = [m for e in examples for m in e.messages]
    offsets = np.zeros(len(examples) + 1, dtype=np.int32)
    np.cumsum([len(e.messages) for e in examples], out=offsets[1:])
    turns = pa.StructArray.from_arrays(
        [
            pa.array([m.role for m in messages], pa.string()),
            pa.array([m.content for m in messages], pa.string()),
            pa.array([m.trainable for m in messages], pa.bool_()),
        ],
        fields=list(MESSAGE),
    )
    metas = [json.dumps(e.meta, ensure_ascii=False, sort_keys=True) if e.meta else "" for e in examples]
    columns = {
        "messages": pa.ListArray.from_arrays(pa.array(offsets), turns, type=SCHEMA.field("messages").type),
        "origin": pa.array([e.origin for e in examples], pa.string()),
        "meta": pa.array(metas, pa.string()),
        "kind": pa.array([e.kind for e in examples], pa.string()),
        **{name: pa.array([getattr(e, name) for e in examples], pa.string()) for name in TEXT_FIELDS},
        "label": pa.array([e.label for e in examples], pa.string()),
        "task": pa.array([e.task for e in examples], pa.string()),
        "synthetic": pa.array([e.synthetic for e in examples], pa.bool_()),
    }
    return pa.RecordBatch.from_arrays([columns[name] for name in SCHEMA.names], schema=SCHEMA)


def records_examples(records: pa.Table | pa.RecordBatch) -> list[Example]:
    """The `Example`s of a table of `SCHEMA`, read column by column (the inverse of `records_batch`; the same
    as `Example.from_row` on each row of `to_pylist()`, at about half its cost: 12 against 23 µs a short chat row).
    Examples are built with positional fields, in `Example`'s field order."""
    turns = records.column("messages")
    if isinstance(turns, pa.ChunkedArray):
        turns = turns.combine_chunks()
    flat = turns.flatten()
    roles, contents, trainable = (values.to_pylist() for values in flat.flatten())
    starts = (turns.offsets.to_numpy() - turns.offsets[0].as_py()).tolist()
    column = {name: records.column(name).to_pylist() for name in SCHEMA.names if name != "messages"}
    column["meta"] = [json.loads(m) if m else {} for m in column["meta"]]
    order = ["origin", "meta", "kind", *TEXT_FIELDS, "label", "task", "synthetic"]
    out = []
    for k, (origin, meta, kind, *text, label, task, synthetic) in enumerate(
        zip(*(column[name] for name in order), strict=True)
    ):
        messages = [Message(roles[j], contents[j], trainable[j]) for j in range(starts[k], starts[k + 1])]
        out.append(Example(messages, origin, meta, kind, *text, label=label, task=task, synthetic=synthetic))
    return out


@dataclass(frozen=True)
class NearParams:
    """MinHash settings; the same for every file of a run so that band keys can be compared across files."""

    num_perm: int = 128
    ngram: int = 5
    threshold: float = 0.8

    @cached_property
    def bands(self) -> tuple[int, int]:
        return optimal_bands(self.threshold, self.num_perm)


@dataclass
class ChunkOut:
    """What one chunk of rows became, computed in a worker process."""

    rejects: list[Reject]
    removed: list[Removed]
    batch: pa.RecordBatch
    exact: np.ndarray
    bands: np.ndarray | None
    chars: np.ndarray
    stats: CleanStats


class ChunkProcessor:
    """Clean a chunk of converted rows and hash what survives (picklable: it runs in worker processes)."""

    def __init__(self, clean: CleanSection, near: NearParams | None) -> None:
        self.cleaner = Cleaner(clean)
        self.near = near

    def __call__(self, items: list[Example | Reject]) -> ChunkOut:
        stats = CleanStats()
        rejects, removed, kept = [], [], []
        for item in items:
            if isinstance(item, Reject):
                rejects.append(item)
                continue
            cleaned = self.cleaner.clean(item, stats)
            (removed if isinstance(cleaned, Removed) else kept).append(cleaned)
        bands = None
        contents = [e.content() for e in kept]
        if self.near is not None:
            hasher = MinHasher(self.near.num_perm, self.near.ngram)
            hashes, counts = shingle_batch([near_form(c) for c in contents], self.near.ngram)
            bands = band_keys(hasher.signatures(hashes, counts), *self.near.bands)
        return ChunkOut(
            rejects=rejects,
            removed=removed,
            batch=records_batch(kept),
            exact=np.fromiter((exact_hash(e) for e in kept), dtype=np.int64, count=len(kept)),
            bands=bands,
            chars=np.fromiter((len(c) for c in contents), dtype=np.int64, count=len(kept)),
            stats=stats,
        )


@dataclass
class Ingested:
    """Cleaned records of one set of files (train, or validation), and what happened to the other rows."""

    folder: Path
    count: int = 0
    files: list[FileInfo] = field(default_factory=list)
    rejected: int = 0
    first_rejects: list[Reject] = field(default_factory=list)
    removed: Counter[str] = field(default_factory=Counter)
    clean: CleanStats = field(default_factory=CleanStats)
    exact: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chars: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    near: NearParams | None = None
    _mm: mmap.mmap | None = field(default=None, repr=False)

    @property
    def records_path(self) -> Path:
        return self.folder / "records.arrow"

    @property
    def rows(self) -> int:
        """Rows read from the files (kept, rejected or removed)."""
        return sum(f.rows for f in self.files)

    def table(self) -> pa.Table:
        """The cleaned records, memory-mapped without read-ahead: reading a row maps in only its own pages.

        The mapping is a Python `mmap` rather than `pa.memory_map` so that `release()` can drop the pages read
        so far: file pages mapped into a process count in its resident memory until then, and random reads
        over a large file (duplicate checks) would otherwise map in most of it."""
        if self._mm is None:
            with self.records_path.open("rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):
                self._mm.madvise(mmap.MADV_RANDOM)
        return pa.ipc.open_stream(pa.BufferReader(pa.py_buffer(self._mm))).read_all()

    def release(self) -> None:
        """Drop the record pages read so far from this process's memory (they are read again when needed)."""
        if self._mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    def band_column(self, band: int) -> np.ndarray:
        return np.fromfile(self.folder / f"band{band}.i64", dtype=np.int64)


def ingest(
    paths: Sequence[str | Path],
    folder: Path,
    options: LoadOptions,
    clean: CleanSection,
    *,
    rejects: JsonlWriter,
    removed: JsonlWriter,
    near: NearParams | None,
    num_proc: int = 1,
    keep_going: bool = False,
) -> Ingested:
    """Read, validate and clean `paths` into `folder` (records.arrow, band keys); rejects and removed rows are
    written as they come. With `keep_going`, unreadable files are reported in their `FileInfo` instead of
    raising."""
    folder.mkdir(parents=True, exist_ok=True)
    out = Ingested(folder=folder, near=near)
    processor = ChunkProcessor(clean, near)
    exact, chars = [], []
    band_files = [(folder / f"band{b}.i64").open("wb") for b in range(near.bands[0])] if near else []
    try:
        with pa.OSFile(str(out.records_path), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            for info, chunks in stream_files(paths, options, keep_going=keep_going, num_proc=num_proc, then=processor):
                out.files.append(info)
                for chunk in chunks:
                    _absorb(chunk, out, writer, band_files, rejects, removed, exact, chars)
    finally:
        for fh in band_files:
            fh.close()
    out.exact = np.concatenate(exact) if exact else out.exact
    out.chars = np.concatenate(chars) if chars else out.chars
    return out


def _absorb(chunk: ChunkOut, out: Ingested, writer, band_files, rejects, removed, exact, chars) -> None:
    for r in chunk.rejects:
        rejects.write(r)
    for r in chunk.removed:
        removed.write(r)
    out.rejected += len(chunk.rejects)
    out.first_rejects += chunk.rejects[: max(0, 3 - len(out.first_rejects))]
    out.clean.merge(chunk.stats)
    out.removed.update(chunk.stats.removed)
    if chunk.batch.num_rows:
        writer.write_batch(chunk.batch)
    out.count += chunk.batch.num_rows
    exact.append(chunk.exact)
    chars.append(chunk.chars)
    if chunk.bands is not None:
        for b, fh in enumerate(band_files):
            np.ascontiguousarray(chunk.bands[:, b]).tofile(fh)


def take_rows(table: pa.Table, indices: np.ndarray, release: Callable[[], object] = lambda: None) -> list[dict]:
    """The rows of `table` at `indices`, in that order, taken batch by batch: `Table.take` joins all the
    chunks of a column into one array first, which copies a memory-mapped file into memory. `release` is
    called every RELEASE_EVERY rows to drop the mapped pages read so far."""
    out: list[dict] = [{}] * len(indices)
    batches = table.to_batches()
    ends = np.cumsum([b.num_rows for b in batches])
    which = np.searchsorted(ends, indices, side="right")
    read = 0
    for b in distinct(which).tolist():
        where = np.flatnonzero(which == b)
        read += len(where)
        if read >= RELEASE_EVERY:
            release()
            read = 0
        local = indices[where] - (ends[b - 1] if b else 0)
        for k, row in zip(where.tolist(), batches[b].take(pa.array(local, type=pa.int64())).to_pylist(), strict=True):
            out[k] = row
    return out


class RowTexts:
    """Records read back by index, in batches, for the exact similarity of candidate pairs (only rows that LSH
    makes candidates are ever read)."""

    def __init__(
        self,
        sources: list[tuple[pa.Table, np.ndarray | None]],
        ngram: int,
        release: Callable[[], object] = lambda: None,
    ) -> None:
        # Each source is a table and the indices into it that the combined numbering covers (None: all rows).
        # `release` is called after each batch to drop the mapped pages it read; what it returns is ignored.
        self.release = release
        self.parts = []
        for table, idx in sources:
            self.parts.append((table, np.arange(table.num_rows) if idx is None else idx))
        self.offsets = np.cumsum([0] + [len(idx) for _, idx in self.parts])
        self.ngram = ngram

    def rows(self, indices: np.ndarray) -> list[dict]:
        """The records at `indices` (combined numbering), in that order."""
        out: list[dict] = [{}] * len(indices)
        part_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for part, (table, idx) in enumerate(self.parts):
            where = np.flatnonzero(part_of == part)
            if len(where):
                rows = take_rows(table, idx[indices[where] - self.offsets[part]], self.release)
                for k, row in zip(where.tolist(), rows, strict=True):
                    out[k] = row
        self.release()
        return out

    def similarities(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Exact shingle Jaccard similarity of rows first[k] and second[k] for every k."""
        both = np.concatenate([first, second])
        unique = distinct(both)
        inverse = np.searchsorted(unique, both)
        texts = [near_text(Example.from_row(r)) for r in self.rows(unique)]
        sets = ShingleSets(texts, self.ngram)
        return sets.jaccard(inverse[: len(first)], inverse[len(first) :])


@dataclass
class Duplicates:
    """Rows to drop as duplicates: index -> (index of the kept row, similarity; 1.0 for exact)."""

    exact: dict[int, tuple[int, float]] = field(default_factory=dict)
    near: dict[int, tuple[int, float]] = field(default_factory=dict)

    def all(self) -> dict[int, tuple[int, float]]:
        return {**self.exact, **self.near}


def find_duplicates(ing: Ingested, mode: str) -> Duplicates:
    """Exact duplicates (`mode` exact or near) and then near duplicates (`mode` near) among one ingest's rows."""
    found = Duplicates()
    if mode == "off" or ing.count < 2:
        return found
    found.exact = {i: (j, 1.0) for i, j in exact_duplicates(ing.exact).items()}
    if mode == "near" and ing.near is not None:
        texts = RowTexts([(ing.table(), None)], ing.near.ngram, ing.release)
        found.near = near_duplicates(
            ing.band_column, ing.near.bands[0], texts.similarities, ing.near.threshold, skip=set(found.exact)
        )
    return found


def removed_rows(ing: Ingested, dups: dict[int, tuple[int, float]], name: str) -> Iterator[Removed]:
    """`Removed` entries for duplicate rows, naming the row each one duplicates (read 2,000 rows at a time)."""
    table = ing.table()
    for chunk in chunked(sorted(dups), 2000):
        rows = take_rows(table, np.asarray(chunk), ing.release)
        kept = [r["origin"] for r in take_rows(table, np.asarray([dups[i][0] for i in chunk]), ing.release)]
        ing.release()
        for i, row, of in zip(chunk, rows, kept, strict=True):
            sim = dups[i][1]
            how = "exact duplicate" if name == "exact_duplicate" else f"near duplicate (Jaccard {sim:.2f})"
            yield Removed(origin=row["origin"], filter=name, reason=f"{how} of {of}", record=row)


@dataclass
class Overlap:
    """Contamination between two sets: rows of each side that have an exact or near duplicate on the other."""

    left: dict[int, tuple[int, float]] = field(default_factory=dict)
    right: dict[int, tuple[int, float]] = field(default_factory=dict)
    exact_left: set[int] = field(default_factory=set)
    """Rows of `left` whose overlap is an exact duplicate (the others are near duplicates)."""
    exact_right: set[int] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {
            "validation_rows": len(self.right),
            "exact": len(self.exact_right),
            "near": len(self.right) - len(self.exact_right),
            "train_rows": len(self.left),
        }


def cross_duplicates(left: tuple[Ingested, np.ndarray], right: tuple[Ingested, np.ndarray], near: bool) -> Overlap:
    """Rows of `left` (training) and `right` (validation) that duplicate a row on the other side; each side is
    an ingest and the indices of its rows that belong to the set.

    Exact overlaps by hash; near ones by MinHash LSH candidates (training rows that share a band key with a
    validation row) verified with the exact Jaccard similarity. Only the keys of the smaller side are ever
    sorted and held, so the cost on the training side is a few bytes a row."""
    (li, lidx), (ri, ridx) = left, right
    n = len(lidx)
    overlap = Overlap()
    if not n or not len(ridx):
        return overlap
    lhash, rhash = li.exact[lidx], ri.exact[ridx]
    for mine, theirs, out, exact in (
        (lhash, rhash, overlap.left, overlap.exact_left),
        (rhash, lhash, overlap.right, overlap.exact_right),
    ):
        order = np.argsort(theirs, kind="stable")
        pos = np.minimum(np.searchsorted(theirs[order], mine), len(theirs) - 1)
        for k in np.flatnonzero(theirs[order[pos]] == mine).tolist():
            out[k] = (int(order[pos[k]]), 1.0)
            exact.add(k)
    if not near or li.near is None:
        return overlap
    texts = RowTexts([(li.table(), lidx), (ri.table(), ridx)], li.near.ngram, lambda: (li.release(), ri.release()))
    found = []  # (training index, validation index) candidates, band by band, in the order they are met
    for band in range(li.near.bands[0]):
        rkeys = ri.band_column(band)[ridx]
        rorder = np.argsort(rkeys, kind="stable")
        rsorted = rkeys[rorder]
        lkeys = li.band_column(band)[lidx]
        hit = holding(lkeys, rsorted)  # training rows sharing this band's key with some validation row
        start = np.searchsorted(rsorted, lkeys[hit], side="left")
        sizes = np.searchsorted(rsorted, lkeys[hit], side="right") - start
        del lkeys
        found.append((np.repeat(hit, sizes), rorder[ranges(start, sizes)]))
    codes = np.concatenate([(i.astype(np.int64) << 32) | j for i, j in found])
    order = np.argsort(codes, kind="stable")
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[order[1:]] != codes[order[:-1]]
    codes = codes[np.sort(order[first])]  # each pair once, in the order first met
    for i, j, sim in verified_pairs(codes, lambda a, b: texts.similarities(a, n + b), li.near.threshold):
        overlap.left.setdefault(i, (j, sim))
        overlap.right.setdefault(j, (i, sim))
    return overlap


def index_origin(table: pa.Table) -> Callable[[int], str]:
    """A function from row index to its origin, reading one row at a time."""
    column = table.column("origin")
    return lambda i: column[i].as_py()
