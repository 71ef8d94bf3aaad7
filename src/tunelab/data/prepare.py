"""The data stage of a run: load → split → tokenize, with every rejected row written out and counted."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.data.config import DataSection
from tunelab.data.load import LoadResult, check_bad_fraction, load_examples
from tunelab.data.records import Example, Reject, write_rejects
from tunelab.data.split import random_split
from tunelab.data.tokenize import Tokenized, tokenize_all


@dataclass
class PreparedData:
    train: list[Tokenized]
    val: list[Tokenized]
    val_examples: list[Example]
    """Validation conversations (for generation metrics), aligned with the ones in `val` that survived."""
    report: dict[str, Any] = field(default_factory=dict)


def prepare_chat_data(cfg: DataSection, tokenizer: PreTrainedTokenizerBase, seed: int, out_dir: Path) -> PreparedData:
    """Load, split and tokenize the configured data; write `rejects.jsonl` and `data_report.json` to `out_dir`."""
    rejects_file = out_dir / "rejects.jsonl"
    train_raw = load_examples(cfg.train, cfg.format)
    rejects = list(train_raw.rejects)
    if cfg.validation:
        val_raw = load_examples(cfg.validation, cfg.format)
        rejects += val_raw.rejects
        train_examples, val_examples = train_raw.examples, val_raw.examples
    else:
        val_raw = LoadResult()
        train_examples, val_examples = random_split(train_raw.examples, cfg.val_fraction, seed)
    train, train_bad = tokenize_all(train_examples, tokenizer, cfg.max_length, cfg.loss_on, cfg.system_prompt)
    val, val_bad = tokenize_all(val_examples, tokenizer, cfg.max_length, cfg.loss_on, cfg.system_prompt)
    rejects += train_bad + val_bad
    write_rejects(rejects, rejects_file)
    combined = LoadResult(examples=train_raw.examples + val_raw.examples, rejects=rejects)
    check_bad_fraction(combined, cfg.max_bad_fraction, rejects_file)
    kept_val = {t.origin for t in val}
    report = {
        "files": {**train_raw.formats, **val_raw.formats},
        "rows": train_raw.rows + val_raw.rows,
        "rejected": len(rejects),
        "rejected_by_reason": dict(Counter(_reason_kind(r) for r in rejects)),
        "train_examples": len(train),
        "val_examples": len(val),
        "train_tokens": sum(len(t.input_ids) for t in train),
        "train_target_tokens": sum(t.target_tokens for t in train),
        "rejects_file": str(rejects_file),
    }
    (out_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    return PreparedData(
        train=train, val=val, val_examples=[e for e in val_examples if e.origin in kept_val], report=report
    )


def _reason_kind(reject: Reject) -> str:
    """Group reasons by their leading words ('malformed JSON', 'missing field ...') for the report."""
    return reject.reason.split("(")[0].split(":")[0].strip()
