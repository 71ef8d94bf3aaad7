"""The `data` section of a run config. Each field's docstring is its help text and the wording of its errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.core.schema import Section

FormatName = Literal[
    "auto",
    "chat",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "text",
    "preference",
    "openai_preference",
    "classification",
    "pairs",
    "token_classification",
]


class CleanSection(Section):
    """Text normalisation, duplicate removal and noise filters. Removed records go to removed.jsonl."""

    unicode: Literal["NFKC", "NFC", "none"] = "NFKC"
    """Unicode normalisation of every text. NFKC also folds compatibility forms (full-width letters, ligatures,
    superscripts: 'x²' becomes 'x2'); use NFC to keep those."""
    whitespace: bool = True
    """Unify line endings, drop trailing spaces and runs of blank lines, strip both ends (inner spaces are kept)."""
    remove_control: bool = True
    """Remove control characters (except tab and newline) and zero-width characters."""
    strip_html: bool = False
    """Remove HTML tags, scripts and comments, and decode entities (&amp; -> &)."""
    pii: list[Literal["email", "phone", "ip"]] = []
    """Personal data to mask: e-mail addresses -> [EMAIL], phone numbers -> [PHONE], IP addresses -> [IP]."""
    dedup: Literal["off", "exact", "near"] = "off"
    """Duplicate removal: `exact` (same text after normalising Unicode and spacing), `near` (exact, then MinHash
    near duplicates at `near_threshold`). The first occurrence is kept."""
    near_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    """Jaccard similarity of character n-gram sets (lower case, punctuation removed) from which two records
    are near duplicates."""
    near_ngram: int = Field(default=5, ge=1, le=32)
    """Characters per shingle for near-duplicate detection."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    """MinHash permutations (more: fewer missed near duplicates, slower)."""
    min_chars: int | None = Field(default=None, ge=0)
    """Remove records with fewer characters than this (all texts together)."""
    max_chars: int | None = Field(default=None, ge=1)
    """Remove records with more characters than this (all texts together)."""
    min_tokens: int | None = Field(default=None, ge=0)
    """Remove records with fewer tokens than this (after the chat template)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Remove records with more tokens than this (after the chat template), instead of truncating them."""
    max_repeated_ngram_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    """Remove records where more than this share of the word 3-grams repeat an earlier one (degenerate loops)."""
    max_non_letter_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    """Remove records where more than this share of the non-space characters are not letters."""
    drop_trivial_answers: bool = False
    """Remove records whose answer has no letter or digit, is a placeholder (N/A, TODO), or is shorter than
    `min_answer_chars`."""
    min_answer_chars: int = Field(default=1, ge=1)
    """With `drop_trivial_answers`: the shortest answer kept, in characters."""


class AugmentSection(Section):
    """Synthetic training records, marked `synthetic` in the record and counted in the report."""

    eda: int = Field(default=0, ge=0)
    """EDA variants per classification record: random word swap, deletion or insertion."""
    eda_alpha: float = Field(default=0.1, gt=0.0, le=0.5)
    """Share of a text's words an EDA variant changes."""
    oversample: bool = False
    """Copy records of smaller classes until every label is as frequent as the most frequent one."""
    paraphrase: int = Field(default=0, ge=0)
    """Paraphrases per chat prompt (last user turn) or classification text, written by `paraphrase_model`."""
    paraphrase_model: str = "smollm2-135m"
    """Any tunelab model source (embedded name, HF folder, .gguf) that writes the paraphrases."""
    paraphrase_max_new_tokens: int = Field(default=128, ge=1)
    """Length limit of a paraphrase in tokens."""
    smote: bool = False
    """SMOTE on sentence embeddings of classification texts, for heads trained on embeddings. Objective `setfit`
    fits its head on its trained encoder's embeddings plus SMOTE's synthetic ones (counted in setfit_head.json);
    the pipeline also saves `encoder`'s balanced embeddings, labels and a synthetic mask as train_smote.npz
    next to the dataset, for a head on that encoder kept frozen. (Objective `classify` trains the body too,
    where fixed vectors do not apply: use `oversample` or `schedule.sampling: balanced` there.)"""
    smote_k: int = Field(default=5, ge=1)
    """Neighbours SMOTE interpolates between."""
    encoder: str = "minilm-l6"
    """Encoder model source for SMOTE's sentence embeddings."""


class ScheduleSection(Section):
    """Which examples an epoch holds and in what order."""

    order: Literal["shuffle", "curriculum"] = "shuffle"
    """`shuffle`: random order (length-grouped when training.group_by_length). `curriculum`: easy examples first,
    the pool of allowed examples growing by `pacing`; every example is still seen once per epoch."""
    difficulty: Literal["length", "field", "loss"] = "length"
    """Curriculum difficulty: token length, a number in each row (`difficulty_field`), or the base model's
    per-example loss from a scoring pass before training."""
    difficulty_field: str = "difficulty"
    """With `difficulty: field`: the row field holding a number, higher is harder (rows without it are rejected)."""
    pacing: Literal["linear", "root", "step"] = "linear"
    """How fast harder examples are admitted: linearly, by square root (fast first), or in `buckets` steps
    (baby steps)."""
    start_fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    """Share of the easiest examples available at the start (linear and root pacing)."""
    buckets: int = Field(default=4, ge=1)
    """Difficulty buckets for `pacing: step`; bucket k joins after k/buckets of the epoch."""
    curriculum_epochs: int = Field(default=1, ge=1)
    """Epochs ordered as a curriculum; later ones are shuffled."""
    sampling: Literal["natural", "balanced", "mixture"] = "natural"
    """`natural`: each example once per epoch. `balanced`: sample so every label is equally frequent.
    `mixture`: sample tasks (one per file, or a row's `task` field) by `mix_weights` or `temperature`."""
    mix_weights: dict[str, float] = {}
    """Task name (file stem or `task` field) -> share of the mixture; tasks left out are not sampled."""
    temperature: float = Field(default=1.0, gt=0.0)
    """Without `mix_weights`: task shares proportional to size^(1/temperature) (1: natural sizes, large:
    uniform over tasks)."""

    @field_validator("mix_weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()) or (value and not any(w > 0 for w in value.values())):
            raise ValueError("mixture weights must be >= 0 and at least one > 0")
        return value


class DataSection(Section):
    train: list[str] = Field(min_length=1)
    """Training file(s), folder(s) or glob patterns: JSON Lines, JSON, CSV/TSV, Parquet or .txt (gzip allowed).
    Formats are detected per file: chat (`messages`), ShareGPT (`conversations`), Alpaca (`instruction`),
    prompt/completion, text, preference (`chosen`/`rejected`, or OpenAI's `preferred_output`), classification
    (`text` + `label`), embedding pairs (`anchor`/`positive`)."""
    validation: list[str] = []
    """Validation file(s). When empty, `val_fraction` of the training rows is held out instead."""
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Fraction of training rows held out for validation when no validation file is given."""
    stratify: Literal["none", "label", "task"] = "none"
    """How `val_fraction` is held out: at random, or stratified so every label (or task) keeps its share."""
    format: FormatName = "auto"
    """Row format of every file; `auto` detects it per file (the most common format among its first rows)."""
    formats: dict[str, FormatName] = {}
    """Format of single files, by file name or stem (e.g. `{reviews.csv: classification}`); wins over `format`."""
    text_unit: Literal["line", "paragraph", "document"] = "line"
    """How a .txt file is cut into records: each line, each blank-line-separated paragraph, or the whole file."""
    max_row_chars: int = Field(default=1_000_000, ge=1)
    """Rows with more characters than this (all texts together) are absurdly long; see `long_rows`."""
    long_rows: Literal["reject", "truncate"] = "reject"
    """What happens to rows over `max_row_chars`: rejected (listed in rejects.jsonl), or kept with every text
    cut to `max_row_chars` characters (counted in the report)."""
    max_length: int = Field(default=1024, ge=8)
    """Maximum tokens per example after the chat template; see `truncation` for longer ones."""
    truncation: Literal["right", "left", "reject"] = "right"
    """Examples longer than `max_length` tokens: cut the end (`right`), cut the start (`left`, keeps the last
    answer), or reject them (listed in rejects.jsonl)."""
    loss_on: Literal["assistant", "last", "all"] = "assistant"
    """Which tokens carry loss: every assistant turn, only the last assistant turn, or every token."""
    system_prompt: str | None = None
    """System message added to rows that have none (otherwise the chat template's default applies)."""
    max_bad_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    """Abort when more than this fraction of rows is rejected (rejects are always written to rejects.jsonl)."""
    clean: CleanSection = CleanSection()
    """Normalisation, deduplication and noise filters."""
    augment: AugmentSection = AugmentSection()
    """Synthetic training records (off by default)."""
    packing: bool = False
    """Pack several examples into each `max_length` sequence (positions restart per example and no example
    attends to another), instead of padding each one."""
    schedule: ScheduleSection = ScheduleSection()
    """Order and mixture of the training examples."""
    contamination: Literal["off", "warn", "remove"] = "warn"
    """Check validation rows against training rows (exact and near duplicates at `clean.near_threshold`):
    `warn` reports the overlap, `remove` also drops the overlapping rows from training."""
    num_proc: int = Field(default=1, ge=1)
    """Processes for reading, cleaning and tokenizing."""
    cache: bool = True
    """Reuse a prepared dataset with the same fingerprint (files, data settings, tokenizer)."""
    cache_dir: str | None = None
    """Where prepared datasets are cached; default `$TUNELAB_HOME/data`. A relative path written in a config file
    is relative to that file's folder (like the data files); one given with --set, to the current folder."""

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _packing_alone(self) -> DataSection:
        s = self.schedule
        if self.packing and (s.order != "shuffle" or s.sampling != "natural"):
            raise ValueError(
                "packing mixes several examples per sequence, so it cannot be combined with a "
                "curriculum or weighted sampling; set data.packing=false or data.schedule to defaults"
            )
        return self
