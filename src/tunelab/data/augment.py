"""Augmentation: synthetic training records, always marked `synthetic` (and counted in the report).

- EDA (Wei & Zou, 2019) for classification texts: random swap, deletion and insertion of words. Insertion
  repeats a word of the same text, since tunelab ships no thesaurus for EDA's synonym steps.
- Minority-class oversampling: copies of records of the smaller classes until every class is as large as the
  largest.
- Paraphrasing of prompts (chat) or texts (classification) by any tunelab model (the embedded one by default).
- SMOTE (imbalanced-learn) on sentence embeddings, for classification heads trained on embeddings. The
  synthetic points are vectors, not texts, and they only mean something in the space of the encoder that made
  them. So: objective `setfit` applies SMOTE to its *trained* encoder's embeddings when it fits its head (the
  synthetic count goes into setfit_head.json); the pipeline saves SMOTE over `augment.encoder`'s embeddings as
  `train_smote.npz` next to the dataset, for a head on that encoder kept frozen. Objective `classify` trains
  its body end to end, where fixed vectors do not apply: balance it with `oversample` or `sampling: balanced`.

Every random choice is seeded by (seed, record origin, variant), so a record's variants do not depend on the
order records are processed in.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import numpy as np

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example

PARAPHRASE_PROMPT = (
    "Rewrite the following text in different words, keeping its meaning and language. Reply with the rewritten "
    "text only.\n\n{text}"
)


def eda(text: str, rng: random.Random, alpha: float = 0.1) -> str:
    """One EDA variant of `text`: a random swap, deletion or insertion of about `alpha` of its words."""
    words = text.split()
    if len(words) < 2:
        return text
    n = max(1, round(alpha * len(words)))
    op = rng.choice(("swap", "delete", "insert"))
    if op == "swap":
        for _ in range(n):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif op == "delete":
        kept = [w for w in words if rng.random() >= alpha]
        if len(kept) == len(words):  # always delete at least one word
            kept.pop(rng.randrange(len(kept)))
        words = kept or [rng.choice(words)]
    else:
        for _ in range(n):
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def synthetic(example: Example, how: str, k: int, **changes: Any) -> Example:
    """A marked copy of `example` with `changes`; its origin says where it came from and how."""
    meta = {**example.meta, "augmented": how, "source": example.origin}
    return replace(example, origin=f"{example.origin}#{how}{k}", synthetic=True, meta=meta, **changes)


def augment_eda(examples: list[Example], per_record: int, alpha: float, seed: int) -> list[Example]:
    """`per_record` EDA variants of every classification record (variants equal to the original are skipped)."""
    out = []
    for ex in examples:
        if ex.kind != "classification":
            continue
        for k in range(per_record):
            rng = random.Random(f"{seed}:{ex.origin}:eda:{k}")
            text = eda(ex.text, rng, alpha)
            if text != ex.text:
                out.append(synthetic(ex, "eda", k + 1, text=text))
    return out


def oversample(examples: list[Example], seed: int) -> list[Example]:
    """Copies of minority-class records (chosen at random, seeded) until every label is as common as the most
    common one."""
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        if ex.label is not None:
            by_label.setdefault(ex.label, []).append(ex)
    if not by_label:
        return []
    top = max(len(v) for v in by_label.values())
    out = []
    for label in sorted(by_label):
        members = by_label[label]
        rng = random.Random(f"{seed}:oversample:{label}")
        for k in range(top - len(members)):
            out.append(synthetic(rng.choice(members), "oversample", k + 1))
    return out


def paraphrase(
    examples: list[Example], generate: Callable[[list[list[Message]]], list[str]], per_record: int = 1
) -> list[Example]:
    """Records whose prompt (last user turn of a chat, or a classification text) is rewritten by `generate`
    (prompts in, answers out); the answer or label stays. Empty or unchanged rewrites are dropped."""
    targets = [ex for ex in examples if ex.kind in ("chat", "classification")]
    requests = []
    for ex in targets:
        requests += [[Message("user", PARAPHRASE_PROMPT.format(text=_prompt_of(ex)))]] * per_record
    answers = generate(requests) if requests else []
    out = []
    for n, ex in enumerate(targets):
        for k in range(per_record):
            text = answers[n * per_record + k].strip()
            if not text or text == _prompt_of(ex).strip():
                continue
            if ex.kind == "classification":
                out.append(synthetic(ex, "paraphrase", k + 1, text=text))
            else:
                last = max(i for i, m in enumerate(ex.messages) if m.role == "user")
                messages = [*ex.messages[:last], replace(ex.messages[last], content=text), *ex.messages[last + 1 :]]
                out.append(synthetic(ex, "paraphrase", k + 1, messages=messages))
    return out


def _prompt_of(ex: Example) -> str:
    if ex.kind == "classification":
        return ex.text
    return next((m.content for m in reversed(ex.messages) if m.role == "user"), "")


def smote_embeddings(
    embeddings: np.ndarray, labels: list[str], k: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMOTE over sentence embeddings: (all vectors, their labels, True for the synthetic ones). Every class
    is brought up to the largest one; `k` is lowered for classes with fewer members."""
    from imblearn.over_sampling import SMOTE

    counts = Counter(labels)
    smallest = min(counts.values())
    if len(counts) < 2 or smallest == max(counts.values()):
        return embeddings, np.asarray(labels), np.zeros(len(labels), dtype=bool)
    if smallest < 2:
        raise DataError(
            f"SMOTE (data.augment.smote) interpolates between records of the same class, so it needs at least 2 per "
            f"class; label '{min(counts, key=lambda label: counts[label])}' has 1. Add rows of that class, or set "
            "data.augment.smote=false (data.augment.oversample copies records instead)."
        )
    sampler = SMOTE(k_neighbors=min(k, smallest - 1), random_state=seed)
    # Untyped library: on arrays SMOTE returns the resampled (vectors, labels), never the 3-tuple some samplers do.
    x, y = cast(tuple[np.ndarray, np.ndarray], sampler.fit_resample(embeddings, np.asarray(labels)))
    # imbalanced-learn appends the synthetic points after the originals.
    mask = np.zeros(len(y), dtype=bool)
    mask[len(labels) :] = True
    return x, y, mask
