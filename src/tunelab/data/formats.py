"""Row formats: detect which one a row is, and convert it into an `Example` (or say exactly what is wrong).

Each converter raises `RowError` naming the field and what is wrong with it; the loader turns that into a
`Reject`. The formats, by the record kind they become:

- chat: `chat` (OpenAI fine-tuning `messages`), `sharegpt` (`conversations` of from/value), `alpaca`
  (`instruction`/`input`/`output`, optional `system` and `history`), `prompt_completion`;
- text: `text` (`text` field, or a .txt file);
- preference: `preference` (`prompt`/`chosen`/`rejected`), `openai_preference` (`input`/`preferred_output`/
  `non_preferred_output`);
- classification: `classification` (`text`, optional `text_pair`, `label`);
- pairs: `pairs` (`anchor`, `positive`, optional `negative`);
- token_classification: `token_classification` (`tokens`: words, `tags` or `ner_tags`: one tag per word).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tunelab.core.registry import register
from tunelab.core.types import ROLES, Message, Role, is_role
from tunelab.data.records import Example, Kind


class RowError(ValueError):
    """A row cannot be converted; the message says what is wrong, `field` names the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _text(row: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field '{key}'", key)
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {_type(value)}", key)
    if required and not value.strip():
        raise RowError(f"field '{key}' is empty", key)
    return value


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a number ({value!r})" if isinstance(value, int | float) else type(value).__name__
    )


def _structured(row: dict[str, Any], key: str) -> Any:
    """A field that holds a list or object; a CSV cell holds it as JSON text, so such text is parsed."""
    value = row.get(key)
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        import json

        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"field '{key}' is text that is not valid JSON ({exc.msg})", key) from None
    return value


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text parts are supported."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        texts = []
        for j, part in enumerate(value):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RowError(
                    f"{where}.content[{j}] is a {part.get('type')!r} part; only text parts are supported",
                    f"{where}.content[{j}]",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RowError(f"{where}.content must be a string, got {_type(value)}", f"{where}.content")


ROLE_ALIASES = {"developer": "system", "human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}


def _messages(raw: Any, key: str, role_key: str = "role", content_key: str = "content") -> list[Message]:
    if raw is None:
        raise RowError(f"missing field '{key}'", key)
    if not isinstance(raw, list) or not raw:
        raise RowError(f"field '{key}' must be a non-empty list of turns, got {_type(raw)}", key)
    messages = []
    for i, m in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RowError(f"{where} must be an object with '{role_key}' and '{content_key}', got {_type(m)}", where)
        if role_key not in m and "role" in m:  # ShareGPT files written with role/content
            role_key, content_key = "role", "content"
        raw_role = m.get(role_key)
        role = ROLE_ALIASES.get(raw_role, raw_role) if isinstance(raw_role, str) else raw_role
        if not is_role(role):
            raise RowError(
                f"{where}.{role_key} is {raw_role!r}; expected one of {', '.join(ROLES)}"
                + (" (tool and function turns are not supported)" if raw_role in ("tool", "function") else ""),
                f"{where}.{role_key}",
            )
        if m.get(content_key) is None and m.get("tool_calls"):
            raise RowError(f"{where} is a tool call without text; tool calling is not supported", where)
        content = _content(m.get(content_key), where) if content_key == "content" else m.get(content_key)
        if not isinstance(content, str):
            raise RowError(f"{where}.{content_key} must be a string, got {_type(content)}", f"{where}.{content_key}")
        weight = m.get("weight", 1)
        if weight not in (0, 1):
            raise RowError(f"{where}.weight must be 0 or 1, got {weight!r}", f"{where}.weight")
        if role == "assistant" and not content.strip() and weight:
            raise RowError(f"{where} is an empty assistant answer", f"{where}.{content_key}")
        messages.append(Message(role=role, content=content, trainable=bool(weight)))
    return messages


def _check_conversation(messages: list[Message], key: str) -> list[Message]:
    if not any(m.role == "assistant" for m in messages):
        raise RowError("the conversation has no assistant turn to learn from", key)
    if not any(m.role == "assistant" and m.trainable for m in messages):
        raise RowError("every assistant turn has weight 0, so nothing would be trained", key)
    return messages


def from_chat(row: dict[str, Any], origin: str) -> Example:
    """OpenAI fine-tuning format: {"messages": [{"role", "content", "weight"?}, ...]}."""
    messages = _messages(_structured(row, "messages"), "messages")
    return Example(messages=_check_conversation(messages, "messages"), origin=origin)


def from_sharegpt(row: dict[str, Any], origin: str) -> Example:
    """ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...], "system"?}."""
    messages = _messages(_structured(row, "conversations"), "conversations", "from", "value")
    system = _text(row, "system", required=False)
    if system.strip() and messages[0].role != "system":
        messages.insert(0, Message("system", system))
    return Example(messages=_check_conversation(messages, "conversations"), origin=origin)


def from_alpaca(row: dict[str, Any], origin: str) -> Example:
    """Alpaca: {"instruction", "input"?, "output", "system"?, "history"? ([[question, answer], ...])}."""
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = []
    system = _text(row, "system", required=False)
    if system.strip():
        messages.append(Message("system", system))
    history = _structured(row, "history")
    if history is not None:
        if not isinstance(history, list):
            raise RowError(
                f"field 'history' must be a list of [question, answer] pairs, got {_type(history)}", "history"
            )
        for i, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise RowError(f"history[{i}] must be a [question, answer] pair of strings", f"history[{i}]")
            messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    messages += [Message("user", prompt), Message("assistant", _text(row, "output"))]
    return Example(messages=messages, origin=origin)


def _turns_or_text(row: dict[str, Any], key: str, role: Role) -> list[Message]:
    value = row.get(key)
    if isinstance(value, list):
        return _messages(value, key)
    return [Message(role, _text(row, key))]


def from_prompt_completion(row: dict[str, Any], origin: str) -> Example:
    """{"prompt", "completion"}: text, or (TRL's conversational form) lists of turns."""
    prompt = _turns_or_text(row, "prompt", "user")
    completion = _turns_or_text(row, "completion", "assistant")
    if completion[-1].role != "assistant":
        raise RowError("field 'completion' must end with an assistant turn", "completion")
    return Example(messages=_check_conversation(prompt + completion, "completion"), origin=origin)


def from_text(row: dict[str, Any], origin: str) -> Example:
    """Plain text for continued pretraining: {"text"}."""
    return Example(kind="text", text=_text(row, "text"), origin=origin)


def _answer(value: Any, key: str) -> tuple[list[Message], str]:
    """A preference answer: a string, or turns ending in an assistant turn (earlier turns are an implicit prompt)."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"field '{key}' is empty", key)
        return [], value
    if value is None:
        raise RowError(f"missing field '{key}'", key)
    turns = _messages(value, key)
    if turns[-1].role != "assistant" or not turns[-1].content.strip():
        raise RowError(f"field '{key}' must end with a non-empty assistant turn", key)
    return turns[:-1], turns[-1].content


def _preference(prompt: list[Message], chosen: Any, rejected: Any, keys: tuple[str, str], origin: str) -> Example:
    chosen_prefix, chosen_text = _answer(chosen, keys[0])
    rejected_prefix, rejected_text = _answer(rejected, keys[1])
    if chosen_prefix != rejected_prefix:
        raise RowError(f"'{keys[0]}' and '{keys[1]}' continue different conversations", keys[1])
    prompt = prompt + chosen_prefix
    if not prompt:
        raise RowError("missing field 'prompt' (and the answers carry no conversation before them)", "prompt")
    if chosen_text.strip() == rejected_text.strip():
        raise RowError(f"'{keys[0]}' and '{keys[1]}' are the same answer, so there is no preference", keys[1])
    return Example(kind="preference", messages=prompt, chosen=chosen_text, rejected=rejected_text, origin=origin)


def from_preference(row: dict[str, Any], origin: str) -> Example:
    """{"prompt"?, "chosen", "rejected"}: strings, or lists of turns (TRL's conversational form)."""
    raw_prompt = row.get("prompt")
    prompt = [] if raw_prompt is None else _turns_or_text(row, "prompt", "user")
    return _preference(prompt, row.get("chosen"), row.get("rejected"), ("chosen", "rejected"), origin)


def from_openai_preference(row: dict[str, Any], origin: str) -> Example:
    """OpenAI's DPO format: {"input": {"messages"}, "preferred_output": [turn], "non_preferred_output": [turn]}."""
    raw_input = _structured(row, "input")
    if not isinstance(raw_input, dict):
        raise RowError(f"field 'input' must be an object with 'messages', got {_type(raw_input)}", "input")
    prompt = _messages(raw_input.get("messages"), "input.messages")
    keys = ("preferred_output", "non_preferred_output")
    return _preference(prompt, _structured(row, keys[0]), _structured(row, keys[1]), keys, origin)


def _label(row: dict[str, Any]) -> str:
    value = row.get("label")
    if value is None:
        raise RowError("missing field 'label'", "label")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"field 'label' must be a string or a number, got {_type(value)}", "label")
    if isinstance(value, float):  # 2.0 is class 2; 0.75 is a regression target, kept as written
        if value != value or value in (float("inf"), float("-inf")):
            raise RowError(f"field 'label' must be a class name or a finite number, got {value!r}", "label")
        value = int(value) if value.is_integer() else value
    text = str(value).strip()
    if not text:
        raise RowError("field 'label' is empty", "label")
    return text


def from_classification(row: dict[str, Any], origin: str) -> Example:
    """{"text", "text_pair"?, "label"}: one text (or a pair) and its class."""
    return Example(
        kind="classification",
        text=_text(row, "text"),
        text_pair=_text(row, "text_pair", required=False),
        label=_label(row),
        origin=origin,
    )


def from_pairs(row: dict[str, Any], origin: str) -> Example:
    """Embedding pairs or triplets: {"anchor", "positive", "negative"?}."""
    return Example(
        kind="pairs",
        anchor=_text(row, "anchor"),
        positive=_text(row, "positive"),
        negative=_text(row, "negative", required=False),
        origin=origin,
    )


def _words(row: dict[str, Any], key: str, *, tags: bool = False) -> list[str]:
    value = _structured(row, key)
    if not isinstance(value, list) or not value:
        raise RowError(f"field '{key}' must be a non-empty list, got {_type(value)}", key)
    out = []
    for i, item in enumerate(value):
        if tags and isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise RowError(f"'{key}[{i}]' must be a string{' or an integer' if tags else ''}, got {_type(item)}", key)
        if not item or item != "".join(item.split()):
            raise RowError(f"'{key}[{i}]' is {item!r}: it must be one word, not empty and without spaces", key)
        out.append(item)
    return out


def from_token_classification(row: dict[str, Any], origin: str) -> Example:
    """{"tokens": [words], "tags" (or "ner_tags"): [one tag per word]}, e.g. BIO tags for NER. Stored as the words
    and the tags each joined by single spaces (`text`, `label`), so cleaning and dedup read the words as text."""
    tokens = _words(row, "tokens")
    key = "ner_tags" if "ner_tags" in row and "tags" not in row else "tags"
    if row.get(key) is None:
        raise RowError("missing field 'tags' (one tag per token)", "tags")
    tags = _words(row, key, tags=True)
    if len(tags) != len(tokens):
        raise RowError(f"'{key}' holds {len(tags)} tags for {len(tokens)} tokens; give one tag per token", key)
    return Example(kind="token_classification", text=" ".join(tokens), label=" ".join(tags), origin=origin)


@dataclass(frozen=True)
class Format:
    """One row format: its name, the record kind it becomes, the keys whose presence identifies it, the fields it
    needs (for messages), and the converter."""

    name: str
    kind: Kind
    signature: tuple[str, ...]
    """A row holding any of these keys looks like this format (formats are tried in registry order)."""
    required: str
    """The fields a row needs, as messages name them."""
    convert: Callable[[dict[str, Any], str], Example]


# One line per format; detection tries them in this order, most specific first.
FORMATS: dict[str, Format] = {}
for _format in (
    Format("chat", "chat", ("messages",), "'messages'", from_chat),
    Format("sharegpt", "chat", ("conversations",), "'conversations'", from_sharegpt),
    Format("openai_preference", "preference", ("preferred_output", "non_preferred_output"),
           "'input', 'preferred_output' and 'non_preferred_output'", from_openai_preference),
    Format("preference", "preference", ("chosen", "rejected"), "'chosen' and 'rejected'", from_preference),
    Format("alpaca", "chat", ("instruction",), "'instruction' and 'output'", from_alpaca),
    Format("prompt_completion", "chat", ("prompt", "completion"), "'prompt' and 'completion'", from_prompt_completion),
    Format("pairs", "pairs", ("anchor", "positive"), "'anchor' and 'positive'", from_pairs),
    Format("token_classification", "token_classification", ("tokens",), "'tokens' and 'tags'",
           from_token_classification),
    Format("classification", "classification", ("label",), "'text' and 'label'", from_classification),
    Format("text", "text", ("text",), "'text'", from_text),
):  # fmt: skip
    register(FORMATS, _format.name, _format, "row format")


def detect(row: dict[str, Any]) -> str | None:
    """The format a row looks like, or None."""
    return next((f.name for f in FORMATS.values() if any(k in row for k in f.signature)), None)


def detect_file(rows: Iterable[Any]) -> str | None:
    """The most common format among the (parsed) rows, ties going to the first seen; None if none is known."""
    counts = Counter(fmt for row in rows if isinstance(row, dict) and (fmt := detect(row)) is not None)
    return counts.most_common(1)[0][0] if counts else None


def convert(row: Any, origin: str, file_format: str | None) -> Example:
    """Convert one parsed row as the file's format. A row of another format is rejected with a note saying so:
    a file holds one format (mixing them hides mistakes, e.g. a classification row without its label would
    otherwise pass as plain text); give each format its own file."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {_type(row)}")
    own = detect(row)
    fmt = file_format or own
    keys = ", ".join(sorted(map(str, row))) or "none"
    if fmt is None:
        raise RowError(f"unknown row format (keys: {keys}); see `tunelab data inspect --help` for the formats")
    if own is None and not any(k in row for k in FORMATS[fmt].signature):
        raise RowError(
            f"unknown row format (keys: {keys}); this file holds {fmt} rows, which need {FORMATS[fmt].required}"
        )
    try:
        return FORMATS[fmt].convert(row, origin)
    except RowError as exc:
        if own is not None and own != fmt:
            note = f" (the row looks like {own}, but this file holds {fmt} rows; give each format its own file)"
            raise RowError(f"{exc}{note}", exc.field) from None
        raise
