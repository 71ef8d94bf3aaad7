"""`tunelab data inspect`: what is in some data files, without changing them.

Every row is read and validated (so counts and rejects are exact), duplicates are counted over all rows;
token lengths are measured on a random sample, since tokenizing is the slow part on large files.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tunelab.data.config import CleanSection
from tunelab.data.ingest import Ingested, NearParams, find_duplicates, ingest
from tunelab.data.load import LoadOptions
from tunelab.data.records import Example, JsonlWriter
from tunelab.data.tokenize import token_length

LENGTH_EDGES = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
# Inspect shows files as they are: no normalisation, no filters.
AS_IS = CleanSection(unicode="none", whitespace=False, remove_control=False)


def inspect_files(
    paths: Sequence[str | Path],
    *,
    options: LoadOptions | None = None,
    tokenizer: Any = None,
    near: NearParams | None = None,
    num_proc: int = 1,
    sample: int = 5_000,
    max_length: int | None = None,
    examples: int = 3,
    rejects_file: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A JSON-ready report: per-file format and counts, rejects by reason, duplicates, lengths, labels, samples.

    All rejects are written to `rejects_file` when given (otherwise to a temporary file whose first rows the
    report quotes).
    """
    options = options or LoadOptions()
    with tempfile.TemporaryDirectory(prefix="tunelab-inspect-") as tmp:
        work = Path(tmp)
        rejects_path = rejects_file or work / "rejects.jsonl"
        with JsonlWriter(rejects_path) as rejects, JsonlWriter(work / "removed.jsonl") as removed:
            ing = ingest(
                paths,
                work / "records",
                options,
                AS_IS,
                rejects=rejects,
                removed=removed,
                near=near,
                num_proc=num_proc,
                keep_going=True,
            )
        report = _counts(ing)
        report["rejects_file"] = str(rejects_file) if rejects_file else None
        report["rejects"] = _read_jsonl(rejects_path, limit=1000)
        report["rejects_by_reason"] = dict(
            Counter(reason_kind(r["reason"]) for r in _iter_jsonl(rejects_path)).most_common()
        )
        table = ing.table()
        report.update(_contents(ing, table, tokenizer, sample, examples, seed, max_length))
        report["duplicates"] = _duplicates(ing, table, near is not None)
    return report


def _counts(ing: Ingested) -> dict[str, Any]:
    return {
        "files": [f.to_json() for f in ing.files],
        "rows": ing.rows,
        "kept": ing.count,
        "rejected": ing.rejected,
        "truncated": sum(f.truncated for f in ing.files),
    }


def _contents(
    ing: Ingested, table: pa.Table, tokenizer: Any, sample: int, examples: int, seed: int, max_length: int | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"kinds": _value_counts(table, "kind"), "tasks": _value_counts(table, "task")}
    labels = _value_counts(table, "label")
    if labels:
        out["labels"] = labels
    out["chars"] = length_stats(ing.chars)
    n = table.num_rows
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)) if n else []
    rows = [Example.from_row(table.slice(int(i), 1).to_pylist()[0]) for i in picked]
    if tokenizer is not None:
        lengths, unit = [token_length(e, tokenizer) for e in rows], "tokens"
    else:
        lengths, unit = [len(e.content().split()) for e in rows], "words"
    out["lengths"] = {"unit": unit, "sampled": len(rows), "of": n, **length_stats(lengths)}
    if tokenizer is not None and max_length is not None:
        # Training cuts or rejects these (data.truncation); listed so they can be found before a run.
        over = [(e.origin, k) for e, k in zip(rows, lengths, strict=True) if k > max_length]
        out["lengths"]["over_max_length"] = {
            "max_length": max_length,
            "count": len(over),
            "rows": [{"origin": o, "tokens": k} for o, k in over[:20]],
        }
    out["examples"] = [_shown(Example.from_row(r)) for r in table.slice(0, examples).to_pylist()]
    ing.release()
    return out


def _value_counts(table: pa.Table, column: str) -> dict[str, int]:
    """Counts of a column's values, most common first, nulls left out (computed in Arrow, not in Python)."""
    import pyarrow.compute as pc

    if not table.num_rows:
        return {}
    # pyarrow.compute makes its functions at import time, so pyright does not know `value_counts`.
    counts = pc.value_counts(table.column(column)).to_pylist()  # pyright: ignore[reportAttributeAccessIssue]
    pairs = sorted(((c["values"], c["counts"]) for c in counts if c["values"] is not None), key=lambda p: -p[1])
    return dict(pairs)


def _duplicates(ing: Ingested, table: pa.Table, near: bool) -> dict[str, Any]:
    dups = find_duplicates(ing, "near" if near else "exact")
    origins = table.column("origin")
    shown = [
        {"row": origins[i].as_py(), "duplicate_of": origins[j].as_py(), "similarity": round(sim, 3)}
        for i, (j, sim) in sorted(dups.all().items())[:20]
    ]
    return {"exact": len(dups.exact), "near": len(dups.near) if near else None, "examples": shown}


def length_stats(values: list[int] | np.ndarray) -> dict[str, Any]:
    """min/median/p95/max/mean and a histogram over fixed power-of-two edges."""
    arr = np.asarray(values)
    if not arr.size:
        return {"count": 0}
    edges = [e for e in LENGTH_EDGES if e <= arr.max()] + [int(arr.max()) + 1]
    counts, _ = np.histogram(arr, bins=edges)
    return {
        "count": len(arr),
        "min": int(arr.min()),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "mean": float(arr.mean()),
        "histogram": [[int(lo), int(hi), int(c)] for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)],
    }


def reason_kind(reason: str) -> str:
    """Group reasons for the report: 'messages[3].role is ...' and 'messages[0].role is ...' are one kind."""
    head = re.split(r" \(|; |, got ", reason, maxsplit=1)[0]
    return re.sub(r"\[\d+\]", "[i]", re.sub(r" is '[^']*'| is \"[^\"]*\"| is [0-9-]+", " is …", head))


def _shown(example: Example) -> dict[str, Any]:
    row = example.to_row()
    keep = {k: v for k, v in row.items() if v not in ("", None, [], False) and k not in ("meta",)}
    if "messages" in keep:
        keep["messages"] = [{"role": m["role"], "content": m["content"][:200]} for m in keep["messages"]]
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in keep.items()}


def _iter_jsonl(path: Path):
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _read_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(_iter_jsonl(path)):
        if i >= limit:
            break
        out.append(row)
    return out
