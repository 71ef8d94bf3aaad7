"""The prepared-dataset cache: an entry per fingerprint of everything that decides the result (file contents, data
settings, tokenizer and chat template, seed, pipeline version), built in a temporary folder and renamed into place,
so a rerun with the same inputs reuses it and an interrupted build leaves nothing that looks complete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from tunelab.core.files import file_digest
from tunelab.core.paths import tunelab_home
from tunelab.data.config import DataSection
from tunelab.data.readers import FileProblem, expand_paths

PIPELINE_VERSION = "5"
"""Bump when a change to the pipeline changes its output, so old cache entries are not reused."""


def cache_root(cfg: DataSection) -> Path:
    """Where the entries live: `data.cache_dir`, default $TUNELAB_HOME/data."""
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else tunelab_home() / "data"


def fingerprint(cfg: DataSection, tokenizer: PreTrainedTokenizerBase, seed: int) -> str:
    """A hash of everything that decides the prepared dataset: file contents, data settings (not the ones that
    only change speed or where the cache is), the tokenizer and chat template, the seed and pipeline version."""
    h = hashlib.sha256(f"tunelab-data:{PIPELINE_VERSION}:{seed}".encode())
    settings = cfg.model_dump(mode="json", exclude={"num_proc", "cache", "cache_dir", "train", "validation"})
    h.update(json.dumps(settings, sort_keys=True).encode())
    for split, paths in (("train", cfg.train), ("validation", cfg.validation)):
        try:
            files = expand_paths(paths)
        except FileProblem:
            files = [Path(p) for p in paths]  # the pipeline reports the problem
        for path in files:
            h.update(f"{split}:{path.resolve()}:".encode())
            h.update(file_digest(path).encode())
    h.update(_tokenizer_digest(tokenizer).encode())
    return h.hexdigest()[:20]


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token])
    return hashlib.blake2b((vocab + extra).encode(), digest_size=16).hexdigest()


def publish(work: Path, entry: Path, replace_complete: bool) -> None:
    """Move a finished build into place with renames. A complete entry that appeared meanwhile (another
    process, e.g. another rank, built the same fingerprint) is kept unless `replace_complete` (cache off)."""
    final = work / "out"
    if entry.exists():
        if (entry / "report.json").is_file() and not replace_complete:
            return
        entry.rename(work / "old")  # moved aside first, so the entry is never half deleted
    try:
        final.rename(entry)
    except OSError:
        if not (entry / "report.json").is_file():
            raise
