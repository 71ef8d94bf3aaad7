"""The files retrieval-augmented training reads: a passage corpus and question/answer rows.

corpus (JSON Lines):    {"id": "card-017", "text": "The Veltrin bridge in Orsk was built in 1847 by Ada Marn."}
questions (JSON Lines): {"question": "Who built the Veltrin bridge?", "answer": "Ada Marn", "passage": "card-017"}

`passage` (the id of the passage that holds the answer) is optional; with it, evaluation reports the retriever's
recall of that passage.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.errors import DataError


@dataclass(frozen=True)
class Passage:
    id: str
    text: str


@dataclass(frozen=True)
class QARow:
    question: str
    answer: str
    passage: str | None
    """Id of the gold passage, when known."""
    origin: str
    """file:line of the row."""


def _rows(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"'{path}' does not exist. Check the path (relative paths are read from the current folder).")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}). Write one JSON object per line.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a row must be a JSON object, not {type(row).__name__}.")
        out.append((number, row))
    return out


def _text(row: dict, key: str, where: str, what: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the row has no text field '{key}'. Every row of {what} needs one.")
    return value.strip()


def read_corpus(path: str | Path) -> list[Passage]:
    """The passages of a JSON Lines corpus (`id`, `text` per row), in file order; ids must be unique."""
    path = Path(path)
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    for number, row in _rows(path):
        where = f"{path}:{number}"
        pid = str(row.get("id", "")).strip()
        if not pid:
            raise DataError(f"{where}: the passage has no 'id'. Give every corpus row an id and a text.")
        if pid in seen:
            raise DataError(f"{where}: passage id '{pid}' was already used on line {seen[pid]}. Make ids unique.")
        seen[pid] = number
        passages.append(Passage(pid, _text(row, "text", where, "a corpus")))
    if not passages:
        raise DataError(f"The corpus '{path}' holds no passages. Give a JSON Lines file of {{id, text}} rows.")
    return passages


def read_questions(paths: list[str], corpus_ids: set[str]) -> list[QARow]:
    """Question/answer rows of JSON Lines files; a `passage` must name a passage of the corpus."""
    out: list[QARow] = []
    for name in paths:
        path = Path(name)
        for number, row in _rows(path):
            where = f"{path}:{number}"
            gold = row.get("passage")
            if gold is not None and str(gold) not in corpus_ids:
                raise DataError(
                    f"{where}: passage '{gold}' is not an id of the corpus. Fix the id or drop the 'passage' field."
                )
            question, answer = _text(row, "question", where, "questions"), _text(row, "answer", where, "questions")
            out.append(QARow(question, answer, None if gold is None else str(gold), where))
    return out


def hold_out(rows: list[QARow], fraction: float, seed: int) -> tuple[list[QARow], list[QARow]]:
    """(train, validation): a seeded random `fraction` of the rows held out (at least one when fraction > 0)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(rows)))
    held = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def corpus_path(spec: str, train_files: list[str]) -> Path:
    """The corpus file: as given when it exists, else relative to the folder of the first training file (so a
    config next to its data can name the corpus by its file name)."""
    path = Path(spec)
    if path.is_file() or path.is_absolute() or not train_files:
        return path
    beside = Path(train_files[0]).parent / spec
    return beside if beside.is_file() else path
