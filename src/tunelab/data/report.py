"""The data report: exact counts of what happened to every row, lengths, labels and padding, as report.json,
a readable report.md, and PNG plots (length histogram, label balance)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tunelab.data.inspect import length_stats, reason_kind
from tunelab.data.pack import pack_indices, padding_waste
from tunelab.data.schedule import epoch_batches
from tunelab.data.store import data_files

if TYPE_CHECKING:
    from tunelab.data.config import DataSection
    from tunelab.data.ingest import Ingested


def build_report(cfg: DataSection, ingested: dict[str, Ingested], counts: dict[str, Any], out: Path) -> dict[str, Any]:
    """The report of a finished build in `out` (whose datasets, rejects.jsonl and removed.jsonl are written).
    The datasets are read batch by batch, so the report costs no memory that grows with the data."""
    train, val = _scan(out / "train", counters=()), _scan(out / "validation", counters=())
    train_records = _scan(out / "train_records", counters=("kind", "task", "label"))
    val_records = _scan(out / "validation_records", counters=("kind", "task"))
    files = [{"split": split, **f.to_json()} for split, ing in ingested.items() for f in ing.files]
    rows = sum(f["rows"] for f in files)
    load_rejected = sum(ing.rejected for ing in ingested.values())
    tokenize_rejected = counts.get("tokenize_rejected", 0)
    removed: Counter[str] = +counts["removed"]  # unary plus drops zero counts
    kept = {"train": train_records.rows, "validation": val_records.rows}
    synthetic = train_records.synthetic + val_records.synthetic
    from_files = kept["train"] + kept["validation"] - synthetic
    accounted = load_rejected + tokenize_rejected + sum(removed.values()) + from_files
    if accounted != rows:  # a bug, not a user mistake: some row went missing without a trace
        raise AssertionError(f"data accounting is off: {rows} rows read, {accounted} accounted for")
    reasons = Counter(reason_kind(r["reason"]) for r in _iter_jsonl(out / "rejects.jsonl"))
    lengths = train.lengths
    np.save(out / "train_lengths.npy", lengths)  # for the padding report, which depends on the batch size
    clean: dict[str, int | dict[str, int]] = {"normalized": sum(i.clean.changed for i in ingested.values())}
    pii = sum((i.clean.pii for i in ingested.values()), Counter())
    if cfg.clean.pii:
        clean["pii_masked"] = {k: pii.get(k, 0) for k in cfg.clean.pii}
    report: dict[str, Any] = {
        "fingerprint": counts["fingerprint"],
        "files": files,
        "rows": rows,
        "rejected": load_rejected + tokenize_rejected,
        "rejected_at_load": load_rejected,
        "rejected_at_tokenize": tokenize_rejected,
        "rejected_by_reason": dict(reasons.most_common()),
        "long_rows": {
            "policy": cfg.long_rows,
            "max_row_chars": cfg.max_row_chars,
            "truncated": sum(f.get("truncated", 0) for f in files),
        },
        "over_context": {
            "policy": cfg.truncation,
            "max_length": cfg.max_length,
            "truncated": int(counts.get("tokenize", Counter()).get("truncated", 0)),
            "rejected": tokenize_rejected,
        },
        "removed": dict(removed.most_common()),
        "cleaning": clean,
        "duplicates": {
            "mode": cfg.clean.dedup,
            "exact": removed.get("exact_duplicate", 0),
            "near": removed.get("near_duplicate", 0),
        },
        "contamination": counts.get("contamination", {"action": cfg.contamination}),
        "split": {**counts["split"], "train": kept["train"], "validation": kept["validation"]},
        "accounting": {
            "rows": rows,
            "kept": from_files,
            "rejected": load_rejected + tokenize_rejected,
            "removed": sum(removed.values()),
        },
        "train_records": kept["train"],
        "val_records": kept["validation"],
        "train_examples": train.rows,
        "val_examples": val.rows,
        "truncated_to_max_length": int(counts.get("tokenize", Counter()).get("truncated", 0)),
        "train_tokens": int(lengths.sum()),
        "train_target_tokens": train.targets,
        "kinds": dict((train_records.counts["kind"] + val_records.counts["kind"]).most_common()),
        "tasks": dict((train_records.counts["task"] + val_records.counts["task"]).most_common()),
        "synthetic": synthetic,
        "augmented": counts.get("augmented", {}),
        "smote": counts.get("smote"),
        "lengths": {"unit": "tokens", **length_stats(lengths)},
    }
    labels = Counter({k: v for k, v in train_records.counts["label"].items() if k is not None})
    if labels:
        report["labels"] = dict(labels.most_common())
    return report


@dataclass
class _Scan:
    rows: int = 0
    synthetic: int = 0
    targets: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    counts: dict[str, Counter] = field(default_factory=dict)


def _scan(folder: Path, counters: tuple[str, ...]) -> _Scan:
    """Counts over one saved split, read as a stream of batches."""
    import pyarrow.compute as pc

    out = _Scan(counts={c: Counter() for c in counters})
    lengths = []
    for name in data_files(folder):
        with pa.OSFile(str(folder / name)) as source:
            for batch in pa.ipc.open_stream(source):
                out.rows += batch.num_rows
                names = batch.schema.names
                # pyarrow.compute makes its functions at import time, so pyright knows none of them.
                if "synthetic" in names and "input_ids" not in names:
                    synthetic = pc.sum(batch.column("synthetic"))  # pyright: ignore[reportAttributeAccessIssue]
                    out.synthetic += int(synthetic.as_py() or 0)
                if "length" in names:
                    lengths.append(batch.column("length").to_numpy(zero_copy_only=False).astype(np.int32))
                    flat = pc.list_flatten(batch.column("labels"))  # pyright: ignore[reportAttributeAccessIssue]
                    targets = pc.sum(pc.not_equal(flat, -100))  # pyright: ignore[reportAttributeAccessIssue]
                    out.targets += int(targets.as_py() or 0)
                for c in counters:
                    values = pc.value_counts(batch.column(c))  # pyright: ignore[reportAttributeAccessIssue]
                    for item in values.to_pylist():
                        out.counts[c][item["values"]] += item["counts"]
    out.lengths = np.concatenate(lengths) if lengths else out.lengths
    return out


def padding_report(
    lengths: list[int] | np.ndarray, batch_size: int, max_length: int, seed: int, sample: int = 100_000
) -> dict[str, Any]:
    """Share of padding in an epoch's batches: random order, length-grouped, and packed into max_length
    (estimated on a random sample of `sample` sequences for larger sets; the shares barely move)."""
    array = np.asarray(lengths)
    if not array.size:
        return {}
    sampled = len(array) > sample
    if sampled:
        array = np.random.default_rng(seed).choice(array, size=sample, replace=False)
    sizes: list[int] = array.tolist()
    shuffled = epoch_batches(sizes, batch_size, seed, 0, group_by_length=False)
    grouped = epoch_batches(sizes, batch_size, seed, 0, group_by_length=True)
    packed = [sum(sizes[i] for i in b) for b in pack_indices(sizes, max_length)]
    packed_batches = epoch_batches(packed, batch_size, seed, 0, group_by_length=True)
    return {
        "batch_size": batch_size,
        "random": round(padding_waste(sizes, shuffled), 4),
        "length_grouped": round(padding_waste(sizes, grouped), 4),
        "packed": round(padding_waste(packed, packed_batches), 4),
        "packed_sequences": len(packed),
        "sampled": len(sizes) if sampled else None,
    }


def write_report(report: dict[str, Any], out: Path, *, name: str = "report", plots: bool = False) -> None:
    """`name`.json and `name`.md (and, with `plots`, PNGs) in `out`."""
    if plots:
        report["plots"] = write_plots(report, out)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / f"{name}.md").write_text(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    """The report as Markdown for people."""
    lines = ["# Data report", ""]
    if r.get("cached"):
        lines += [f"Reused the prepared dataset `{r.get('dataset')}` (same fingerprint `{r['fingerprint']}`).", ""]
    lines += ["| file | split | format | rows | kept | rejected | truncated |", "|---|---|---|---:|---:|---:|---:|"]
    for f in r["files"]:
        if f.get("problem"):
            lines.append(f"| {f['path']} | {f['split']} | unreadable: {f['problem']} | | | | |")
        else:
            lines.append(
                f"| {f['path']} | {f['split']} | {f['format']} | {f['rows']} | {f['kept']} | {f['rejected']} "
                f"| {f['truncated']} |"
            )
    a = r["accounting"]
    lines += [
        "",
        f"**{a['rows']:,} rows read**: {r['train_records']:,} train + {r['val_records']:,} validation kept, "
        f"{a['rejected']:,} rejected, {a['removed']:,} removed by filters.",
        "",
    ]
    lines += [
        f"Long rows (over {r['long_rows']['max_row_chars']:,} characters): policy `{r['long_rows']['policy']}`, "
        f"{r['long_rows']['truncated']} truncated.",
        "",
    ]
    if "over_context" in r:
        o = r["over_context"]
        lines += [
            f"Examples over {o['max_length']:,} tokens after the chat template: policy `{o['policy']}`, "
            f"{o['truncated']} truncated, {o['rejected']} rejected at tokenization.",
            "",
        ]
    if r["rejected_by_reason"]:
        lines += [
            "## Rejected rows",
            "",
            f"All in `{r.get('rejects_file', 'rejects.jsonl')}` with file, line, field.",
            "",
            "| count | reason |",
            "|---:|---|",
        ]
        lines += [f"| {n} | {reason} |" for reason, n in r["rejected_by_reason"].items()]
        lines.append("")
    if r["removed"]:
        lines += [
            "## Removed by filters",
            "",
            f"All in `{r.get('removed_file', 'removed.jsonl')}`.",
            "",
            "| count | filter |",
            "|---:|---|",
        ]
        lines += [f"| {n} | {name} |" for name, n in r["removed"].items()]
        lines.append("")
    c = r["contamination"]
    if "validation_rows" in c:
        lines += [
            "## Contamination (validation vs train)",
            "",
            f"{c['validation_rows']} validation rows ({c['exact']} exact, {c['near']} near) duplicate "
            f"{c['train_rows']} training rows; action `{c['action']}`, {c['removed']} training rows removed.",
            "",
        ]
    s = r["split"]
    lines += [
        "## Split",
        "",
        f"{s['method']}: {s['train']:,} train / {s['validation']:,} validation records, "
        f"{r['train_examples']:,} / {r['val_examples']:,} sequences.",
        "",
    ]
    length = r["lengths"]
    if length.get("count"):
        lines += [
            "## Lengths (tokens, train)",
            "",
            f"min {length['min']}, median {length['median']:.0f}, "
            f"p95 {length['p95']:.0f}, max {length['max']}; {r['truncated_to_max_length']} truncated to "
            "max_length.",
            "",
        ]
    p = r["padding"]
    if p:
        lines += [
            f"Padding at batch size {p['batch_size']}: random order {p['random']:.1%}, length-grouped "
            f"{p['length_grouped']:.1%}, packed {p['packed']:.1%} ({p['packed_sequences']} packed sequences).",
            "",
        ]
    lines += [f"Kinds: {_pairs(r['kinds'])}. Tasks: {_pairs(r['tasks'])}. Synthetic records: {r['synthetic']}.", ""]
    if r.get("augmented") or r.get("smote"):
        made = ", ".join(f"{n} by {how}" for how, n in r["augmented"].items()) or "none"
        lines += ["## Augmentation", "", f"Synthetic training records (marked `synthetic`): {made}."]
        if r.get("smote"):
            sm = r["smote"]
            lines.append(
                f"SMOTE on {sm['encoder']} embeddings: {sm['synthetic']} synthetic of {sm['vectors']} vectors "
                "in train_smote.npz."
            )
        lines.append("")
    if r.get("labels"):
        lines += ["## Labels (train)", "", "| label | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in r["labels"].items()]
        lines.append("")
    for name in r.get("plots", []):
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def write_plots(r: dict[str, Any], out: Path) -> list[str]:
    """lengths.png (token length histogram) and labels.png (label balance, when there are labels)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    written = []
    hist = r["lengths"].get("histogram")
    if hist:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([f"{lo}-{hi - 1}" for lo, hi, _ in hist], [c for _, _, c in hist], color="#4c72b0")
        ax.set_xlabel("tokens per training sequence")
        ax.set_ylabel("sequences")
        ax.set_title("Length histogram (train)")
        ax.tick_params(axis="x", labelrotation=45)
        fig.tight_layout()
        fig.savefig(out / "lengths.png", dpi=100)
        plt.close(fig)
        written.append("lengths.png")
    if r.get("labels"):
        items = list(r["labels"].items())[:50]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([str(k) for k, _ in items], [v for _, v in items], color="#55a868")
        ax.set_ylabel("records")
        ax.set_title("Label balance (train)")
        ax.tick_params(axis="x", labelrotation=45)
        fig.tight_layout()
        fig.savefig(out / "labels.png", dpi=100)
        plt.close(fig)
        written.append("labels.png")
    return written


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _iter_jsonl(path: Path):
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)
