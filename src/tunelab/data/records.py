"""The canonical record every input format becomes, and the reject that every bad row becomes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    trainable: bool = True
    """For assistant turns: whether this turn carries loss (OpenAI's per-message `weight`)."""


@dataclass
class Example:
    """One conversation. `origin` is 'file:line' so every later message can point back to the row."""

    messages: list[Message]
    origin: str
    meta: dict[str, Any] = field(default_factory=dict)

    def prompt_and_answer(self) -> tuple[list[Message], str]:
        """Everything before the last assistant turn, and that turn's text (the reference answer)."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last], self.messages[last].content


@dataclass(frozen=True)
class Reject:
    """A row that did not become a record, with where it was and why."""

    origin: str
    reason: str
    row: str
    """The raw row text, cut to 500 characters."""


def write_rejects(rejects: list[Reject], path: Path) -> None:
    """Write rejects as JSON lines (an empty file when there are none, so its absence never means 'unknown')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
