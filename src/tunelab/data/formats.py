"""Row formats: detect which one a row is, and convert it into an `Example` (or say exactly what is wrong).

Each converter raises `RowError` with a message naming the field; the loader turns that into a `Reject`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.data.records import ROLES, Example, Message


class RowError(ValueError):
    """A row cannot be converted; the message names the field and what is wrong."""


def _text(row: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"field '{key}' is empty")
    return value


def _check_conversation(messages: list[Message]) -> list[Message]:
    if not any(m.role == "assistant" for m in messages):
        raise RowError("conversation has no assistant turn to learn from")
    if not any(m.role == "assistant" and m.trainable for m in messages):
        raise RowError("every assistant turn has weight 0, so nothing would be trained")
    return messages


def from_chat(row: dict[str, Any], origin: str) -> Example:
    """OpenAI fine-tuning format: {"messages": [{"role", "content", "weight"?}, ...]}."""
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RowError("field 'messages' must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise RowError(f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        weight = m.get("weight", 1)
        if weight not in (0, 1):
            raise RowError(f"messages[{i}].weight must be 0 or 1, got {weight!r}")
        if role == "assistant" and not content.strip():
            raise RowError(f"messages[{i}] is an empty assistant answer")
        messages.append(Message(role=role, content=content, trainable=bool(weight)))
    return Example(messages=_check_conversation(messages), origin=origin)


SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def from_sharegpt(row: dict[str, Any], origin: str) -> Example:
    """ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}."""
    raw = row.get("conversations")
    if not isinstance(raw, list) or not raw:
        raise RowError("field 'conversations' must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(f"conversations[{i}] must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(m.get("from"))
        if role is None:
            raise RowError(f"conversations[{i}].from is {m.get('from')!r}; expected human, gpt or system")
        value = m.get("value")
        if not isinstance(value, str):
            raise RowError(f"conversations[{i}].value must be a string, got {type(value).__name__}")
        messages.append(Message(role=role, content=value))
    return Example(messages=_check_conversation(messages), origin=origin)


def from_alpaca(row: dict[str, Any], origin: str) -> Example:
    """Alpaca: {"instruction", "input"?, "output", "system"?}."""
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [Message("user", prompt), Message("assistant", _text(row, "output"))]
    system = _text(row, "system", required=False)
    if system.strip():
        messages.insert(0, Message("system", system))
    return Example(messages=messages, origin=origin)


def from_prompt_completion(row: dict[str, Any], origin: str) -> Example:
    """{"prompt", "completion"}: one user turn and one assistant turn."""
    return Example(
        messages=[Message("user", _text(row, "prompt")), Message("assistant", _text(row, "completion"))],
        origin=origin,
    )


FORMATS: dict[str, Callable[[dict[str, Any], str], Example]] = {
    "chat": from_chat,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "prompt_completion": from_prompt_completion,
}

# The key whose presence identifies each format, checked in this order.
SIGNATURES: tuple[tuple[str, str], ...] = (
    ("messages", "chat"),
    ("conversations", "sharegpt"),
    ("instruction", "alpaca"),
    ("prompt", "prompt_completion"),
)


def detect(row: dict[str, Any]) -> str | None:
    """The format a row looks like, or None."""
    for key, name in SIGNATURES:
        if key in row:
            return name
    return None
