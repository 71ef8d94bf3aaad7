"""Conversations longer than the model's context, answered hierarchically: chunk, take notes, then answer.

The longest message (a document pasted with a question, as a rule) is cut into parts that each fit the context
beside the request; the model writes notes on each part, asked what in it the request needs; the message is then
replaced by the notes, in order, followed by its request (its last lines within `request_tokens` tokens,
verbatim). When the notes are still too long they are condensed the same way again, up to `MAX_LEVELS` levels.
Everything else in the conversation (system prompt, earlier turns) stays as it is.

`Condenser.plan` says what to ask and how to put the notes together; `condense` does the asking through the
`answer` it is given (eval: batched `generate_answers`; serve: the engine, from a worker thread). What it can and
cannot do: a detail the model leaves out of its notes is lost to the answer, and a request that needs the whole
text at once (count every occurrence) is answered from notes, not from the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.models.chat import prompt_text

LongPrompts = Literal["error", "hierarchical"]
"""What to do with a prompt longer than the model's context: stop with the row named, or condense it."""
MAX_LEVELS = 3
"""Rounds of note-taking at most (notes of notes of notes)."""
NOTE_ASK = (
    "Below is part {part} of {parts} of a long text, then the request that comes with the whole text. Write down, "
    "briefly and in the text's own words where you can, everything in this part that the request needs. If nothing "
    "in it matters to the request, write: nothing.\n\n--- part {part} of {parts} ---\n{chunk}\n--- end of part ---"
    "\n\nRequest: {request}"
)
NOTES = "Notes taken from a long text in {parts} parts, in order (the text itself is longer than fits):\n\n{notes}"


@dataclass(frozen=True)
class Plan:
    """One round: the note prompts to answer, and how the answers replace the long message."""

    messages: list[Message]
    index: int
    """The message that is cut into parts."""
    chunks: list[str]
    request: str
    asks: list[list[Message]]

    def combine(self, notes: list[str]) -> list[Message]:
        """The conversation with the long message replaced by the notes on its parts and its request."""
        kept = [
            f"[{k}] {note.strip()}"
            for k, note in enumerate(notes, 1)
            if note.strip().lower() not in ("", "nothing", "nothing.")
        ]
        body = NOTES.format(
            parts=len(self.chunks), notes="\n".join(kept) or "(no part held anything the request needs)"
        )
        message = replace(self.messages[self.index], content=f"{body}\n\n{self.request}")
        return [*self.messages[: self.index], message, *self.messages[self.index + 1 :]]


@dataclass(frozen=True)
class Condensed:
    messages: list[Message]
    levels: int = 0
    """Rounds of note-taking it took (0: the conversation fitted as it was)."""
    parts: int = 0
    """Parts the longest message was cut into in the first round."""


class Condenser:
    """Plans the rounds for one model: its tokenizer, its prompt budget and how long a note may be."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        budget: int,
        note_tokens: int | None = None,
        request_tokens: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        """`note_tokens` (a note's length) defaults to 128 and `request_tokens` (the request kept verbatim) to 256,
        each at most an eighth of the budget."""
        self.tokenizer, self.budget, self.system_prompt = tokenizer, budget, system_prompt
        self.note_tokens = note_tokens or min(128, max(16, budget // 8))
        self.request_tokens = request_tokens or min(256, max(16, budget // 8))

    def count(self, messages: list[Message]) -> int:
        """Prompt tokens of a conversation (chat template, system prompt and generation prompt included)."""
        text = prompt_text(self.tokenizer, messages, self.system_prompt)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def plan(self, messages: list[Message]) -> Plan | None:
        """The next round for `messages`, or None when they fit the budget. Raises DataError when the rest of the
        conversation leaves no room for even a short part."""
        if self.count(messages) <= self.budget:
            return None
        index = max(range(len(messages)), key=lambda i: len(messages[i].content))
        lines, counts, request = self._split_request(messages[index].content)
        rest = [*messages[:index], replace(messages[index], content=request), *messages[index + 1 :]]
        overhead = self.count([Message("user", NOTE_ASK.format(part=99, parts=99, chunk="", request=request))])
        room = self.budget - max(overhead, self.count(rest)) - self.note_tokens
        if room < 32 or not "".join(lines).strip():
            raise DataError(
                f"A conversation of {self.count(messages)} tokens is over the model's prompt budget of {self.budget} "
                f"tokens, and the rest of it (its other messages and the last {self.request_tokens} tokens of its "
                "longest message) leaves no room for parts of that message. Shorten the other messages."
            )
        chunks = self._chunks(lines, counts, room)
        asks = [[Message("user", NOTE_ASK.format(part=k, parts=len(chunks), chunk=c, request=request))]
                for k, c in enumerate(chunks, 1)]  # fmt: skip
        return Plan(messages, index, chunks, request, asks)

    def _lines(self, text: str) -> tuple[list[str], list[int]]:
        """`text`'s lines (with their ends) and each one's token count, tokenized once as a batch."""
        lines = text.splitlines(keepends=True)
        return lines, [len(x) for x in self.tokenizer(lines, add_special_tokens=False)["input_ids"]] if lines else []

    def _split_request(self, text: str) -> tuple[list[str], list[int], str]:
        """The document's lines and their token counts, and the request: the text's last whole lines within
        `request_tokens` tokens (the question after a pasted text, as a rule), or its last `request_tokens` tokens
        when even its last line is longer."""
        lines, counts = self._lines(text.rstrip())
        used, start = 0, len(lines)
        while start > 1 and used + counts[start - 1] <= self.request_tokens:
            start -= 1
            used += counts[start]
        if start < len(lines):
            return lines[:start], counts[:start], "".join(lines[start:]).strip()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        cut = max(0, len(ids) - self.request_tokens)
        return *self._lines(self._decode(ids[:cut])), self._decode(ids[cut:]).strip()

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def _chunks(self, lines: list[str], counts: list[int], size: int) -> list[str]:
        """The lines (with their token counts) joined into parts of at most `size` tokens, cut at line ends where
        a line fits."""
        chunks: list[str] = []
        current, used = "", 0
        for line, n in zip(lines, counts, strict=True):
            if n > size:  # one line longer than a part: cut it by tokens
                if current:
                    chunks.append(current)
                ids = self.tokenizer(line, add_special_tokens=False)["input_ids"]
                pieces = [self._decode(ids[i : i + size]) for i in range(0, len(ids), size)]
                chunks += pieces[:-1]
                current, used = pieces[-1], len(ids) % size or size
                continue
            if used + n > size and current:
                chunks.append(current)
                current, used = "", 0
            current, used = current + line, used + n
        if current.strip():
            chunks.append(current)
        return chunks


def condense(
    condenser: Condenser, messages: list[Message], answer: Callable[[list[list[Message]]], list[str]]
) -> Condensed:
    """`messages` brought within the condenser's budget, the notes written by `answer` (conversations -> replies)."""
    result = Condensed(messages)
    for level in range(1, MAX_LEVELS + 1):
        plan = condenser.plan(result.messages)
        if plan is None:
            return result
        result = Condensed(plan.combine(answer(plan.asks)), level, result.parts or len(plan.chunks))
    return _checked(condenser, result)


def _checked(condenser: Condenser, result: Condensed) -> Condensed:
    if condenser.count(result.messages) > condenser.budget:
        raise DataError(
            f"After {MAX_LEVELS} rounds of notes the conversation is still {condenser.count(result.messages)} tokens, "
            f"over the model's prompt budget of {condenser.budget}. Shorten the text, or lower the note length."
        )
    return result
