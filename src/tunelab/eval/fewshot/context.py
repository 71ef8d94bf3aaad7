"""Whether a k-shot prompt fits the model's context, and what is done when it does not: an explicit policy.

Generation itself never truncates a prompt: a prompt longer than the model's positions would run past them
(RoPE models then answer from positions they were never trained on, without any error). So the prompt is measured
when it is built, as `generate_answers` renders it (chat template plus generation prompt), against the context
less the tokens to generate, and one of two policies applies:

- `error` (the default): stop with a `DataError` that says how long the prompt is and what the limit is.
- `drop`: leave out demonstrations, farthest from the question first (for `similar` shots the least similar),
  until the prompt fits. Each example records `prompt_tokens` and `shots_dropped` in its `meta`, and
  `context_summary` adds them up, so a caller reports how many prompts lost shots instead of hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.data.records import Example
from tunelab.models.chat import prompt_text
from tunelab.models.rope import context_length

Overflow = Literal["error", "drop"]


def context_window(model: nn.Module) -> int | None:
    """The model's context in tokens (its config's `max_position_embeddings` or equivalent, with a dynamic RoPE
    scaling's reach); None if unknown."""
    return context_length(getattr(model, "config", None))


@dataclass(frozen=True)
class ContextLimit:
    """The longest prompt allowed and what to do with a longer one."""

    tokenizer: PreTrainedTokenizerBase
    max_tokens: int
    """Prompt tokens allowed: the model's context less the tokens to generate."""
    overflow: Overflow = "error"
    system_prompt: str | None = None
    """A system prompt the evaluation adds to every conversation (it counts towards the prompt)."""
    window: int | None = None
    """The model's whole context, for the messages."""

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        overflow: Overflow = "error",
        system_prompt: str | None = None,
    ) -> ContextLimit | None:
        """The limit for `model` when it generates `max_new_tokens`; None when its config names no context."""
        window = context_window(model)
        if window is None:
            return None
        return cls(tokenizer, window - max_new_tokens, overflow, system_prompt, window)

    def count(self, example: Example) -> int:
        """Tokens of `example`'s prompt as generation renders it."""
        prompt, _ = example.prompt_and_answer()
        text = prompt_text(self.tokenizer, prompt, self.system_prompt)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def too_long(self, example: Example, tokens: int, shots: int) -> str:
        """The error for a prompt of `tokens` tokens with `shots` demonstrations."""
        whole = f"the model's {self.window} positions less the tokens to generate" if self.window else "the limit"
        fix = (
            "The question alone is too long for the model: shorten it or raise the model's context."
            if shots == 0
            else "Use fewer shots (--shots), shorter demonstrations, or the `drop` overflow policy (--shot-overflow "
            "drop), which leaves out the demonstrations farthest from the question and reports how many."
        )
        return (
            f"{example.origin or 'an example'}: its prompt with {shots} demonstration(s) is {tokens} tokens, more "
            f"than the {self.max_tokens} allowed ({whole}). {fix}"
        )


def context_summary(examples: list[Example]) -> dict[str, Any]:
    """Longest prompt and how many prompts lost demonstrations to the `drop` policy (from the examples' meta)."""
    measured = [ex.meta for ex in examples if "prompt_tokens" in ex.meta]
    return {
        "longest_prompt": max((m["prompt_tokens"] for m in measured), default=None),
        "prompts_shortened": sum(1 for m in measured if m["shots_dropped"] > 0),
        "shots_dropped": sum(m["shots_dropped"] for m in measured),
    }
