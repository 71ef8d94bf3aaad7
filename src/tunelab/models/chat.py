"""A conversation as the text a model reads: the tokenizer's own chat template, a default system prompt, and the
generation prompt that asks for the assistant's turn. Training (loss spans), generation, serving and RL rollouts
all render prompts here, so a prompt reads the same wherever it is built."""

from __future__ import annotations

from typing import cast

from transformers import PreTrainedTokenizerBase

from tunelab.core.types import Message


def with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """Add `system_prompt` in front of a conversation that has no system message."""
    if system_prompt is None or (messages and messages[0].role == "system"):
        return messages
    return [Message("system", system_prompt), *messages]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The chat template's text for these messages."""
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    return cast(str, text)  # tokenize=False: the text, not token ids


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[Message], system_prompt: str | None = None) -> str:
    """What a model is given to answer `messages`: the chat template with `system_prompt` in front (when the
    conversation has none) and the generation prompt after."""
    return render(tokenizer, with_system(messages, system_prompt), add_generation_prompt=True)
