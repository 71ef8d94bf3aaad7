"""`tunelab data inspect` (look at files: formats, rejects, duplicates, lengths, labels) and `tunelab data prepare`
(run a config's data pipeline): argument handling and printing here, the work in `tunelab.data`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunelab.config import load_config
from tunelab.core.errors import DataError, TunelabError
from tunelab.data.formats import FORMATS
from tunelab.data.ingest import NearParams
from tunelab.data.inspect import inspect_files
from tunelab.data.load import LoadOptions
from tunelab.data.pipeline import prepare_dataset
from tunelab.models.load import load_tokenizer

console = Console()


def inspect(args: argparse.Namespace) -> None:
    if args.format != "auto" and args.format not in FORMATS:
        raise DataError(f"--format {args.format!r} is not a format. Formats: auto, {', '.join(FORMATS)}.")
    if not 0 < args.near_threshold <= 1:
        raise DataError(f"--near-threshold must be in (0, 1], got {args.near_threshold}.")
    options = LoadOptions(format=args.format, text_unit=args.text_unit, max_row_chars=max(1, args.max_row_chars))
    tokenizer, note = _tokenizer(args.model)
    report = inspect_files(
        args.files,
        options=options,
        tokenizer=tokenizer,
        num_proc=max(1, args.num_proc),
        near=None if args.no_near else NearParams(threshold=args.near_threshold),
        rejects_file=Path(args.rejects) if args.rejects else None,
        sample=max(1, args.sample),
        max_length=max(1, args.max_length),
    )
    report["rejects"] = report["rejects"][: max(0, args.show)]
    if note:
        report["lengths"]["note"] = note
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_inspect(report)
    unreadable = [f for f in report["files"] if f.get("problem")]
    if unreadable:
        raise DataError(
            f"{len(unreadable)} of {len(report['files'])} file(s) could not be read: "
            + " ".join(f["problem"] for f in unreadable)
        )


def prepare(args: argparse.Namespace) -> None:
    overrides = list(args.set or [])
    if args.num_proc:
        overrides.append(f"data.num_proc={args.num_proc}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("prepared") / Path(args.config).stem
    tokenizer = load_tokenizer(cfg.model.source)
    prepared = prepare_dataset(
        cfg.data, tokenizer, cfg.training.seed, out, batch_size=cfg.training.batch_size, plots=True
    )
    link_dataset(prepared.folder, out / "dataset")
    print_prepare(prepared.report, out)


def link_dataset(source: Path, target: Path) -> None:
    """Put the cached dataset folders under `target` as hard links (no copy; a copy where links fail)."""
    if target.exists():
        shutil.rmtree(target)
    for path in source.rglob("*"):
        if path.is_dir() or path.suffix == ".jsonl" or path.name == "report.json":
            continue
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def print_prepare(r: dict[str, Any], out: Path) -> None:
    """A short summary of a prepare run."""
    a = r["accounting"]
    cached = " (reused from the cache)" if r.get("cached") else ""
    console.print(
        f"[bold]{a['rows']:,} rows[/]{cached}: {r['train_records']:,} train + {r['val_records']:,} validation kept, "
        f"{a['rejected']:,} rejected, {a['removed']:,} removed"
    )
    for name, count in r["removed"].items():
        console.print(f"  removed by {name}: {count:,}")
    c = r["contamination"]
    if c.get("validation_rows"):
        console.print(
            f"[yellow]contamination[/]: {c['validation_rows']} validation rows ({c['exact']} exact, {c['near']} near) "
            f"repeat {c['train_rows']} training rows; {c['removed']} removed (data.contamination={c['action']})"
        )
    if r["lengths"].get("count"):
        p = r["padding"]
        console.print(
            f"{r['train_examples']:,} training sequences, {r['train_tokens']:,} tokens; padding at batch size "
            f"{p['batch_size']}: random {p['random']:.1%}, length-grouped {p['length_grouped']:.1%}, "
            f"packed {p['packed']:.1%}"
        )
    console.print(f"dataset: {escape(str(out / 'dataset'))}  (cache {escape(r['dataset'])})")
    console.print(
        f"report: {escape(str(out / 'report.md'))}; rejects: {escape(r['rejects_file'])}; "
        f"removed: {escape(r['removed_file'])}"
    )


def _tokenizer(model: str) -> tuple[Any, str | None]:
    if model.lower() == "none":
        return None, "lengths in words (--model none)"
    try:
        return load_tokenizer(model), None
    except (TunelabError, OSError, ValueError) as exc:
        return None, f"lengths in words: the tokenizer of '{model}' could not be loaded ({exc})"


def print_inspect(report: dict[str, Any]) -> None:
    """The inspect report as text."""
    files = Table(title="Files")
    for column in ("file", "type", "format", "rows", "kept", "rejected", "truncated"):
        numeric = column in ("rows", "kept", "rejected", "truncated")
        files.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for f in report["files"]:
        if f.get("problem"):
            files.add_row(escape(f["path"]), f.get("file_type", ""), "[red]unreadable[/]", "-", "-", "-", "-")
        else:
            files.add_row(
                escape(f["path"]),
                f["file_type"],
                f["format"],
                *(f"{f[k]:,}" for k in ("rows", "kept", "rejected", "truncated")),
            )
    console.print(files)
    for f in report["files"]:
        if f.get("problem"):
            console.print(f"[red]unreadable[/] {escape(f['path'])}: {escape(f['problem'])}")
    console.print(
        f"rows {report['rows']:,}: kept {report['kept']:,}, rejected {report['rejected']:,}"
        + (f", truncated {report['truncated']:,}" if report["truncated"] else "")
    )
    if report["rejected"]:
        console.print("[bold]Rejects by reason[/]")
        for reason, count in report["rejects_by_reason"].items():
            console.print(f"  {count:>8,}  {escape(reason)}")
        console.print("[bold]Rejected rows[/] (file:line  field  reason)")
        for r in report["rejects"]:
            field = f"  \\[{escape(r['field'])}]" if r.get("field") else ""  # "\\[" prints a bracket, not rich markup
            console.print(f"  {escape(str(r['file']))}:{r['line']}{field}  {escape(r['reason'])}", soft_wrap=True)
        more = report["rejected"] - len(report["rejects"])
        if more > 0:
            where = report["rejects_file"] or "the file given with --rejects"
            console.print(f"  ... {more:,} more rejected rows; all are listed in {where}")
    dup = report["duplicates"]
    near = f", near duplicates {dup['near']:,}" if dup["near"] is not None else ""
    console.print(f"[bold]Duplicates[/]: exact {dup['exact']:,}{near} (rows that repeat an earlier row)")
    for d in dup["examples"][:5]:
        console.print(f"  {escape(d['row'])} duplicates {escape(d['duplicate_of'])} (similarity {d['similarity']})")
    console.print(f"[bold]Kinds[/]: {_pairs(report['kinds'])}   [bold]Tasks[/]: {_pairs(report['tasks'])}")
    if report.get("labels"):
        console.print(f"[bold]Labels[/]: {_pairs(report['labels'])}")
        _bars(report["labels"])
    lengths = report["lengths"]
    if lengths.get("count"):
        sampled = f" (sample of {lengths['sampled']:,})" if lengths["sampled"] < lengths["of"] else ""
        console.print(
            f"[bold]Length[/] in {lengths['unit']}{sampled}: min {lengths['min']}, median {lengths['median']:.0f}, "
            f"p95 {lengths['p95']:.0f}, max {lengths['max']}"
        )
        _bars({f"{lo}-{hi - 1}": c for lo, hi, c in lengths["histogram"]})
        if lengths.get("note"):
            console.print(f"  ({escape(lengths['note'])})")
        over = lengths.get("over_max_length")
        if over and over["count"]:
            console.print(
                f"[yellow]{over['count']:,} rows{sampled} longer than {over['max_length']:,} tokens[/] "
                "(training cuts or rejects them, as data.truncation says): "
                + ", ".join(f"{escape(r['origin'])} ({r['tokens']:,})" for r in over["rows"]),
                soft_wrap=True,
            )
    if report["examples"]:
        console.print("[bold]Examples[/]")
        for e in report["examples"]:
            console.print("  " + escape(json.dumps(e, ensure_ascii=False)[:400]), soft_wrap=True)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{escape(str(k))} {v:,}" for k, v in counts.items()) or "-"


def _bars(counts: dict[str, int], width: int = 40) -> None:
    top = max(counts.values(), default=0) or 1
    for key, value in counts.items():
        console.print(f"  {escape(str(key)):>12} {'█' * round(width * value / top):<{width}} {value:,}")
