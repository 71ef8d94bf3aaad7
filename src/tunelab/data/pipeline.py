"""The data pipeline of a run: load → clean → dedup → split → contamination check → tokenize → report.

`prepare_dataset` runs it and stores the result as Hugging Face `datasets` folders in a cache entry named by
a fingerprint of everything that decides the result (file contents, data settings, tokenizer, seed), so a
rerun with the same inputs only copies the reports. `prepare_chat_data` is what training calls.

Every row read is accounted for: it is kept (train or validation), rejected (rejects.jsonl, with file, line,
field and reason), or removed by a named filter (removed.jsonl). The report's `accounting` checks the sum.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.data import augment
from tunelab.data.cache import cache_root, fingerprint, publish
from tunelab.data.config import DataSection
from tunelab.data.ingest import (
    RELEASE_EVERY,
    SCHEMA,
    Ingested,
    NearParams,
    cross_duplicates,
    find_duplicates,
    ingest,
    records_batch,
    records_examples,
    removed_rows,
)
from tunelab.data.load import LoadOptions, check_counts
from tunelab.data.pack import pack
from tunelab.data.parallel import bounded_map, chunked, fewer_collections
from tunelab.data.records import Example, JsonlWriter, Reject, Removed
from tunelab.data.report import build_report, padding_report, write_report
from tunelab.data.schedule import Schedule, make_schedule
from tunelab.data.split import split_indices
from tunelab.data.store import SPLITS, TOKENIZED, PreparedDataset, save_as_dataset, selected_rows, tokenized_items
from tunelab.data.tokenize import ChatCache, Tokenized, tokenize_records
from tunelab.models.generate import generate_answers
from tunelab.models.load import load_model, load_tokenizer
from tunelab.models.pooling import encoder_vectors

Rows = tuple[Ingested, np.ndarray]
"""The rows of one split: an ingest and the indices of its rows that belong to the split."""


@dataclass
class PreparedData:
    """A run's training data in memory: items of the objective's kind (`Tokenized` sequences for language
    modelling, pairs, class items, prompts, ...), the validation conversations, the report and the schedule."""

    train: list[Any]
    val: list[Any]
    val_examples: Sequence[Example]
    """Validation conversations (for generation metrics), aligned with the ones in `val` that survived."""
    report: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)
    """How the training loop orders and samples `train` each epoch (pass it to `epoch_batches`)."""


def prepare_dataset(
    cfg: DataSection,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    out_dir: Path,
    *,
    batch_size: int = 8,
    plots: bool = False,
    report_name: str = "report",
) -> PreparedDataset:
    """Run (or reuse from the cache) the whole pipeline; write `report_name`.json and .md, rejects.jsonl and
    removed.jsonl (and PNG plots with `plots`) to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg, tokenizer, seed)
    root = cache_root(cfg)
    entry = root / fp
    if not (cfg.cache and (entry / "report.json").is_file()):
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".{fp}-"))
        try:
            with fewer_collections():
                _build(cfg, tokenizer, seed, work, fp)
            publish(work, entry, replace_complete=not cfg.cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cached = False
    else:
        cached = True
    report = json.loads((entry / "report.json").read_text())
    report["cached"] = cached
    report["dataset"] = str(entry)
    # Padding depends on the batch size, which is not part of the fingerprint; it is cheap to recompute.
    lengths = np.load(entry / "train_lengths.npy")
    report["padding"] = padding_report(lengths, batch_size, cfg.max_length, seed)
    for name in ("rejects.jsonl", "removed.jsonl"):
        if entry.resolve() != out_dir.resolve():
            shutil.copyfile(entry / name, out_dir / name)
    report["rejects_file"] = str(out_dir / "rejects.jsonl")
    report["removed_file"] = str(out_dir / "removed.jsonl")
    write_report(report, out_dir, name=report_name, plots=plots)
    return PreparedDataset(folder=entry, report=report)


def prepare_chat_data(
    cfg: DataSection, tokenizer: PreTrainedTokenizerBase, seed: int, out_dir: Path, *, batch_size: int = 8
) -> PreparedData:
    """The data for language-model training (chat and text records), in memory; reports go to `out_dir`."""

    # In a run folder the reports are data_report.*, next to the run's own files.
    prepared = prepare_dataset(cfg, tokenizer, seed, out_dir, batch_size=batch_size, report_name="data_report")
    kinds = prepared.report["kinds"]
    other = {k: n for k, n in kinds.items() if k not in ("chat", "text")}
    if other:
        shown = ", ".join(f"{n} {k}" for k, n in other.items())
        raise DataError(
            f"The training data holds {shown} records, which language-model training (sft) cannot use: it trains "
            "on chat and text records. Give files of chat, instruction or text rows, or an objective made for "
            "these records."
        )
    train = tokenized_items(prepared.table("train"))
    val = tokenized_items(prepared.table("validation"))
    records = prepared.table("validation_records")
    val_origins = {t.origin for t in val}
    val_examples = [ex for ex in records_examples(records) if ex.kind == "chat" and ex.origin in val_origins]
    if cfg.packing:
        train = pack(train, cfg.max_length)
        prepared.report["packed_sequences"] = len(train)
    schedule = make_schedule(cfg.schedule, train)
    return PreparedData(train=train, val=val, val_examples=val_examples, report=prepared.report, schedule=schedule)


def _build(cfg: DataSection, tokenizer: PreTrainedTokenizerBase, seed: int, work: Path, fp: str) -> None:
    out = work / "out"
    out.mkdir()
    by_field = cfg.schedule.order == "curriculum" and cfg.schedule.difficulty == "field"
    options = LoadOptions(
        format=cfg.format,
        formats=dict(cfg.formats),
        text_unit=cfg.text_unit,
        max_row_chars=cfg.max_row_chars,
        long_rows=cfg.long_rows,
        difficulty_field=cfg.schedule.difficulty_field if by_field else None,
    )
    c = cfg.clean
    near = NearParams(c.num_perm, c.near_ngram, c.near_threshold)
    uses_near = c.dedup == "near" or cfg.contamination != "off"
    counts: dict[str, Any] = {"removed": Counter(), "fingerprint": fp}
    clock = _Clock(counts.setdefault("seconds", {}))
    with JsonlWriter(out / "rejects.jsonl") as rejects, JsonlWriter(out / "removed.jsonl") as removed:
        ingested = {}
        for split, paths in (("train", cfg.train), ("validation", cfg.validation)):
            if paths:
                ingested[split] = ingest(
                    paths,
                    work / split,
                    options,
                    c,
                    rejects=rejects,
                    removed=removed,
                    near=near if uses_near else None,
                    num_proc=cfg.num_proc,
                )
        clock.lap("read_validate_clean_hash")
        rows = sum(i.rows for i in ingested.values())
        load_rejected = sum(i.rejected for i in ingested.values())
        first = [r for i in ingested.values() for r in i.first_rejects][:3]
        check_counts(rows, load_rejected, first, cfg.max_bad_fraction, None)
        for ing in ingested.values():
            counts["removed"].update(ing.removed)

        keep = {split: _dedup(ing, c.dedup, removed, counts) for split, ing in ingested.items()}
        clock.lap("dedup")
        train_ing = ingested["train"]
        sets: dict[str, Rows]
        if "validation" in ingested:
            sets = {"train": (train_ing, keep["train"]), "validation": (ingested["validation"], keep["validation"])}
            counts["split"] = {"method": "files"}
        else:
            strata = _strata(train_ing, keep["train"], cfg.stratify)
            tr, va = split_indices(len(keep["train"]), cfg.val_fraction, seed, strata)
            sets = {"train": (train_ing, keep["train"][tr]), "validation": (train_ing, keep["train"][va])}
            counts["split"] = {
                "method": "random" if cfg.stratify == "none" else f"stratified by {cfg.stratify}",
                "val_fraction": cfg.val_fraction,
            }
        sets["train"] = _contamination(cfg, sets, removed, counts)
        clock.lap("split_contamination")
        extra = {"train": _augment(cfg, *sets["train"], seed, out, counts), "validation": []}
        clock.lap("augment")

        token_rejects: list[Reject] = []
        for split in SPLITS:
            ing, idx = sets[split]
            _write_split(cfg, tokenizer, ing, idx, out, split, rejects, removed, counts, token_rejects, extra[split])
        clock.lap("tokenize_write")
        tokenize_rejected = counts.get("tokenize_rejected", 0)
        check_counts(rows, load_rejected + tokenize_rejected, first or token_rejects[:3], cfg.max_bad_fraction, None)
    report = build_report(cfg, ingested, counts, out)
    clock.lap("report")
    report["seconds"] = counts["seconds"]
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))


class _Clock:
    """Seconds per pipeline stage, for the report (where the time goes on large data)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(now - self.last, 3)
        self.last = now


def _augment(
    cfg: DataSection, ing: Ingested, idx: np.ndarray, seed: int, out: Path, counts: dict[str, Any]
) -> list[Example]:
    """Synthetic training records as `data.augment` asks (SMOTE's vectors go to train_smote.npz instead)."""

    a = cfg.augment
    if not (a.eda or a.oversample or a.paraphrase or a.smote) or not len(idx):
        return []
    examples = [e for rows in selected_rows(ing, idx) for e in records_examples(rows)]  # idx ascending: same order
    extra: list[Example] = []
    if a.eda:
        extra += augment.augment_eda(examples, a.eda, a.eda_alpha, seed)
    if a.paraphrase:
        extra += augment.paraphrase(
            examples, _paraphraser(a.paraphrase_model, a.paraphrase_max_new_tokens), a.paraphrase
        )
    if a.oversample:
        extra += augment.oversample(examples + [e for e in extra if e.label is not None], seed)
    if a.smote:
        labelled = [e for e in examples if e.kind == "classification"]
        if labelled:
            vectors = encoder_vectors(a.encoder, [e.text for e in labelled]).numpy()
            labels = cast(list[str], [e.label for e in labelled])  # a classification record always has a label
            x, y, is_synthetic = augment.smote_embeddings(vectors, labels, a.smote_k, seed)
            origins = np.asarray([e.origin for e in labelled] + [""] * int(is_synthetic.sum()))
            np.savez(out / "train_smote.npz", embeddings=x, labels=y, synthetic=is_synthetic, origins=origins)
            counts["smote"] = {"vectors": len(y), "synthetic": int(is_synthetic.sum()), "encoder": a.encoder}
    counts["augmented"] = dict(Counter(e.meta["augmented"] for e in extra))
    return extra


def _paraphraser(source: str, max_new_tokens: int):
    """Prompts in, answers out, with a tunelab model source."""

    model, tokenizer = load_model(source), load_tokenizer(source)
    return lambda prompts: generate_answers(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, show_progress=False
    )


def _dedup(ing: Ingested, mode: str, removed: JsonlWriter, counts: dict[str, Any]) -> np.ndarray:
    """Indices of the rows that survive duplicate removal; the others are written to removed.jsonl."""
    dups = find_duplicates(ing, mode)
    if dups.exact or dups.near:
        for name, found in (("exact_duplicate", dups.exact), ("near_duplicate", dups.near)):
            for r in removed_rows(ing, found, name):
                removed.write(r)
            counts["removed"][name] += len(found)
    keep = np.ones(ing.count, dtype=bool)
    keep[list(dups.all())] = False
    return np.flatnonzero(keep)


def _strata(ing: Ingested, idx: np.ndarray, by: str) -> list[str | None] | None:
    if by == "none":
        return None
    column = ing.table().column("label" if by == "label" else "task").to_pylist()
    return [column[i] for i in idx]


def _contamination(cfg: DataSection, sets: dict[str, Rows], removed: JsonlWriter, counts: dict[str, Any]) -> Rows:
    """Check validation against training; with `remove`, drop the training rows that overlap."""
    train_ing, train_idx = sets["train"]
    if cfg.contamination == "off" or not len(sets["validation"][1]):
        return sets["train"]
    overlap = cross_duplicates(sets["train"], sets["validation"], near=train_ing.near is not None)
    counts["contamination"] = {"action": cfg.contamination, **overlap.counts(), "removed": 0}
    if cfg.contamination == "remove" and overlap.left:
        table = train_ing.table()
        val_ing, val_idx = sets["validation"]
        val_origin = val_ing.table().column("origin")
        for n, k in enumerate(sorted(overlap.left), start=1):
            if n % RELEASE_EVERY == 0:
                train_ing.release()
            row = table.slice(int(train_idx[k]), 1).to_pylist()[0]
            j, sim = overlap.left[k]
            how = "exact duplicate" if k in overlap.exact_left else f"near duplicate (Jaccard {sim:.2f})"
            removed.write(
                Removed(
                    origin=row["origin"],
                    filter="contamination",
                    reason=f"{how} of validation row {val_origin[int(val_idx[j])].as_py()}",
                    record=row,
                )
            )
        counts["removed"]["contamination"] += len(overlap.left)
        counts["contamination"]["removed"] = len(overlap.left)
        gone = set(overlap.left)
        train_idx = np.array([x for k, x in enumerate(train_idx) if k not in gone], dtype=np.int64)
    return train_ing, train_idx


# Worker-side state for tokenizing, set once per worker process so the tokenizer is not sent with every chunk.
_TOKENIZE: dict[str, Any] = {}


def _set_tokenize(tokenizer: PreTrainedTokenizerBase, cfg: DataSection) -> None:
    fast = getattr(tokenizer, "is_fast", False)
    _TOKENIZE.update(tokenizer=tokenizer, cfg=cfg, cache=ChatCache.of(cast(Any, tokenizer)) if fast else None)


def _write_split(
    cfg: DataSection,
    tokenizer: PreTrainedTokenizerBase,
    ing: Ingested,
    idx: np.ndarray,
    out: Path,
    split: str,
    rejects: JsonlWriter,
    removed: JsonlWriter,
    counts: dict[str, Any],
    first: list[Reject],
    extra: list[Example],
) -> None:
    """Save the split's records (the rows `idx` of `ing`, then the synthetic `extra` ones) and their tokenized
    sequences as `datasets` folders."""

    records_file, tokens_file = out / f"{split}_records.arrow", out / f"{split}.arrow"
    stats = counts.setdefault("tokenize", Counter())
    with (
        pa.OSFile(str(records_file), "wb") as rsink,
        pa.ipc.new_stream(rsink, SCHEMA) as rec_writer,
        pa.OSFile(str(tokens_file), "wb") as tsink,
        pa.ipc.new_stream(tsink, TOKENIZED) as tok_writer,
    ):
        chunks = chain(
            selected_rows(ing, idx),
            (pa.Table.from_batches([records_batch(c)]) for c in chunked(extra, 2000)),
        )
        results = bounded_map(_tokenize_chunk, chunks, cfg.num_proc, _set_tokenize, (tokenizer, cfg))
        # An empty batch first: `datasets` cannot read an Arrow stream without any batch (an empty split).
        rec_writer.write_batch(pa.RecordBatch.from_pylist([], schema=SCHEMA))
        tok_writer.write_batch(pa.RecordBatch.from_pylist([], schema=TOKENIZED))
        for kept, tokens, bad, gone, chunk_stats in results:
            rec_writer.write_table(kept)
            tok_writer.write_batch(tokens)
            for r in bad:
                rejects.write(r)
            for r in gone:
                removed.write(r)
            first += bad[: max(0, 3 - len(first))]
            counts["tokenize_rejected"] = counts.get("tokenize_rejected", 0) + len(bad)
            counts["removed"]["length_tokens"] += len(gone)
            stats.update(chunk_stats)
    save_as_dataset(records_file, out / f"{split}_records", SCHEMA)
    save_as_dataset(tokens_file, out / split, TOKENIZED)


def _tokenize_chunk(chunk: pa.Table) -> tuple[pa.Table, pa.RecordBatch, list[Reject], list[Removed], Counter]:
    tokenizer, cfg = _TOKENIZE["tokenizer"], _TOKENIZE["cfg"]
    c = cfg.clean
    keep, bad, gone = [], [], []
    kept_seqs: list[tuple[Example, list[Tokenized]]] = []
    stats: Counter[str] = Counter()
    examples = records_examples(chunk)
    lm = [ex for ex in examples if ex.kind in ("chat", "text")]
    # One batched call for the chunk (shared chat-template shapes, one fast-tokenizer batch), in row order.
    outcomes = iter(
        tokenize_records(
            lm, tokenizer, cfg.max_length, cfg.loss_on, cfg.system_prompt, cfg.truncation, _TOKENIZE["cache"]
        )
    )
    for k, example in enumerate(examples):
        keep.append(False)
        if example.kind not in ("chat", "text"):
            keep[-1] = True
            continue
        seqs = next(outcomes)
        if isinstance(seqs, ValueError):
            bad.append(
                Reject(
                    origin=example.origin,
                    reason=str(seqs),
                    row=json.dumps(_row(chunk, k), ensure_ascii=False)[:500],
                    stage="tokenize",
                )
            )
            continue
        n = sum(len(s.input_ids) for s in seqs)
        if (c.min_tokens is not None and n < c.min_tokens) or (c.max_tokens is not None and n > c.max_tokens):
            bound = (
                f"fewer than clean.min_tokens={c.min_tokens}"
                if c.min_tokens is not None and n < c.min_tokens
                else f"more than clean.max_tokens={c.max_tokens}"
            )
            reason = f"{n} tokens, {bound}"
            gone.append(Removed(origin=example.origin, filter="length_tokens", reason=reason, record=_row(chunk, k)))
            continue
        keep[-1] = True
        stats["truncated"] += any(s.truncated for s in seqs)
        stats["sequences"] += len(seqs)
        kept_seqs.append((example, seqs))
    kept = chunk.filter(pa.array(keep, type=pa.bool_()))
    return kept, _tokens_batch(kept_seqs), bad, gone, stats


def _tokens_batch(rows: list[tuple[Example, list[Tokenized]]]) -> pa.RecordBatch:
    """The `TOKENIZED` batch of each row's sequences, built column by column."""
    seqs = [s for _, row_seqs in rows for s in row_seqs]
    owners = [example for example, row_seqs in rows for _ in row_seqs]
    columns = {
        "input_ids": [s.input_ids for s in seqs],
        "labels": [s.labels for s in seqs],
        "origin": [s.origin for s in seqs],
        "task": [s.task for s in seqs],
        "label": [e.label for e in owners],
        "kind": [e.kind for e in owners],
        "length": [len(s.input_ids) for s in seqs],
        "truncated": [s.truncated for s in seqs],
        "synthetic": [e.synthetic for e in owners],
        "difficulty": [e.meta.get("difficulty") for e in owners],
    }
    return pa.RecordBatch.from_pydict(columns, schema=TOKENIZED)


def _row(table: pa.Table, k: int) -> dict[str, Any]:
    return table.slice(k, 1).to_pylist()[0]
