"""Paraphrase as a perturbation: a language model rewrites each prompt text, greedily, from one fixed instruction.

Greedy decoding makes the rewrite a function of the model and the text alone, and the suite file keeps the
rewrites, so a replayed suite needs no paraphraser. A small model's paraphrase is not always faithful (it may
answer the question instead of rewriting it, or drop a detail); the suite file lets the user read what was asked.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.types import Message
from tunelab.models.generate import generate_answers

INSTRUCTION = (
    "Rewrite the following text in different words. Keep its meaning and every name, number and date. "
    "Reply with the rewritten text only.\n\nText: {text}"
)


def paraphrase_all(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], *, batch_size: int = 16
) -> list[str]:
    """The model's greedy rewrite of each text (an empty string where it wrote nothing usable)."""
    prompts = [[Message("user", INSTRUCTION.format(text=t))] for t in texts]
    budget = max(32, 2 * max((len(tokenizer(t)["input_ids"]) for t in texts), default=0))
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=budget, batch_size=batch_size)
    return [_cleaned(a) for a in answers]


def _cleaned(answer: str) -> str:
    """The rewrite without a leading label a chat model tends to add ("Rewritten text: ...")."""
    head, sep, rest = answer.partition(":")
    if sep and len(head) < 30 and "text" in head.lower():
        answer = rest
    return answer.strip().strip('"').strip()
