"""The canonical record every input format becomes, and what every row that is not kept becomes instead.

One `Example` type holds all kinds of data (chat, plain text, preference pairs, classification, embedding
pairs) so that cleaning, deduplication, splitting and reporting are written once. Which fields are used
depends on `kind`; the others stay empty.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tunelab.core.types import Message

Kind = Literal["chat", "text", "preference", "classification", "pairs", "token_classification"]
KINDS: tuple[str, ...] = ("chat", "text", "preference", "classification", "pairs", "token_classification")
# The plain-string fields of an Example, in a fixed order (also the Arrow column order).
TEXT_FIELDS: tuple[str, ...] = ("text", "text_pair", "chosen", "rejected", "anchor", "positive", "negative")


@dataclass
class Example:
    """One record. `origin` is 'file:line' so every later message can point back to the row.

    chat: `messages`. text: `text`. preference: `messages` (the prompt turns), `chosen`, `rejected`.
    classification: `text`, optional `text_pair`, `label`. pairs: `anchor`, `positive`, optional `negative`.
    token_classification: `text` (the words joined by single spaces) and `label` (their tags, joined the same way).
    """

    messages: list[Message] = field(default_factory=list)
    origin: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "chat"
    text: str = ""
    text_pair: str = ""
    chosen: str = ""
    rejected: str = ""
    anchor: str = ""
    positive: str = ""
    negative: str = ""
    label: str | None = None
    task: str = ""
    """Which dataset (or row-level `task` field) the record came from; kept for mixing and per-task metrics."""
    synthetic: bool = False
    """Made by augmentation, not read from a file."""

    def prompt_and_answer(self) -> tuple[list[Message], str]:
        """Everything before the last assistant turn, and that turn's text (the reference answer)."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last], self.messages[last].content

    def texts(self) -> Iterator[tuple[str, str]]:
        """(field, text) for every non-empty text of the record; message fields are named `messages[i]`."""
        for i, m in enumerate(self.messages):
            yield f"messages[{i}]", m.content
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value:
                yield name, value

    def answers(self) -> list[tuple[str, str]]:
        """(field, text) of what the model is trained to produce: trainable assistant turns, chosen/rejected."""
        out = [(f"messages[{i}]", m.content) for i, m in enumerate(self.messages) if m.role == "assistant"]
        if self.kind == "preference":
            out = [("chosen", self.chosen), ("rejected", self.rejected)]
        return out

    def content(self) -> str:
        """All texts of the record joined (with the label for classification): what dedup and filters look at."""
        return "\n".join(text for _, text in self.texts())

    def map_texts(self, fn: Callable[[str], str]) -> Example:
        """A copy with `fn` applied to every text (message contents included); the original is unchanged."""
        messages = [Message(m.role, fn(m.content), m.trainable) for m in self.messages]
        texts = {k: fn(v) if (v := getattr(self, k)) else v for k in TEXT_FIELDS}
        return Example(
            messages,
            self.origin,
            dict(self.meta),
            self.kind,
            **texts,
            label=self.label,
            task=self.task,
            synthetic=self.synthetic,
        )

    def to_row(self) -> dict[str, Any]:
        """A flat dict with a fixed set of keys (JSON lines, Arrow tables)."""
        # Written out rather than dataclasses.asdict, which deep-copies recursively and is 10x slower.
        return {
            "messages": [{"role": m.role, "content": m.content, "trainable": m.trainable} for m in self.messages],
            "origin": self.origin,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True) if self.meta else "",
            "kind": self.kind,
            **{name: getattr(self, name) for name in TEXT_FIELDS},
            "label": self.label,
            "task": self.task,
            "synthetic": self.synthetic,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Example:
        """Inverse of `to_row`."""
        values = dict(row)
        values["messages"] = [Message(**m) for m in values.get("messages") or []]
        values["meta"] = json.loads(values["meta"]) if values.get("meta") else {}
        return cls(**values)


def split_origin(origin: str) -> tuple[str, int | None]:
    """'path:12' -> ('path', 12); an origin without a line number (a synthetic record) -> (origin, None)."""
    path, sep, line = origin.rpartition(":")
    return (path, int(line)) if sep and line.isdigit() else (origin, None)


@dataclass(frozen=True)
class Reject:
    """A row that did not become a record, with where it was, which field was wrong, and why."""

    origin: str
    reason: str
    row: str
    """The raw row text, cut to 500 characters."""
    field: str | None = None
    """The offending field (e.g. `messages[2].role`), when one field is to blame."""
    stage: str = "load"
    """Where the row was rejected: `load` (format/validation) or `tokenize` (too long, nothing to learn)."""

    def to_json(self) -> dict[str, Any]:
        file, line = split_origin(self.origin)
        return {
            "file": file,
            "line": line,
            "field": self.field,
            "reason": self.reason,
            "stage": self.stage,
            "row": self.row,
        }


@dataclass(frozen=True)
class Removed:
    """A valid record that cleaning took out (a duplicate, a filter hit, contamination), with the filter's name."""

    origin: str
    filter: str
    reason: str
    record: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        file, line = split_origin(self.origin)
        return {"file": file, "line": line, "filter": self.filter, "reason": self.reason, "record": self.record}


class JsonlWriter:
    """Append JSON lines to a file as they come, so millions of rejects never sit in memory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.count = 0
        self._fh: IO[str] = path.open("w", encoding="utf-8")

    def write(self, item: Reject | Removed | dict[str, Any]) -> None:
        payload = item if isinstance(item, dict) else item.to_json()
        # Invalid UTF-8 survives as surrogate escapes in the raw row; write it as escapes, not as a crash.
        self._fh.write(json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace").decode() + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_rejects(rejects: Iterable[Reject], path: Path) -> None:
    """Write rejects as JSON lines (an empty file when there are none, so its absence never means 'unknown')."""
    with JsonlWriter(path) as out:
        for r in rejects:
            out.write(r)
