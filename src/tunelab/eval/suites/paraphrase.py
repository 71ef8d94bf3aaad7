"""Paraphrase as a perturbation: a language model rewrites each prompt text, greedily, from one fixed instruction.

Greedy decoding makes the rewrite a function of the model and the text alone, and the suite file keeps the
rewrites, so a replayed suite needs no paraphraser. A small model's paraphrase is not always faithful (it may
answer the question instead of rewriting it, or drop a detail); the suite file lets the user read what was asked.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.types import Message
from tunelab.eval.fewshot.context import context_window
from tunelab.models.chat import prompt_text
from tunelab.models.generate import generate_answers

INSTRUCTION = (
    "Rewrite the following text in different words. Keep its meaning and every name, number and date. "
    "Reply with the rewritten text only.\n\nText: {text}"
)
MAX_NEW_TOKENS = 256
"""The longest rewrite asked for; a text that would need more is better left to a perturbation without a model."""


def paraphrase_all(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], *, batch_size: int = 16
) -> list[str | None]:
    """The model's greedy rewrite of each text: an empty string where it wrote nothing usable, None where the
    request and a rewrite half as long again as the text would not fit the model's context."""
    prompts = [[Message("user", INSTRUCTION.format(text=t))] for t in texts]
    lengths = [len(ids) for ids in tokenizer([prompt_text(tokenizer, p) for p in prompts])["input_ids"]]
    budgets = [min(MAX_NEW_TOKENS, 3 * len(tokenizer(t)["input_ids"]) // 2 + 8) for t in texts]
    window = context_window(model)
    fits = [k for k in range(len(texts)) if window is None or lengths[k] + budgets[k] <= window]
    out: list[str | None] = [None] * len(texts)
    if fits:
        budget = max(budgets[k] for k in fits)
        answers = generate_answers(model, tokenizer, [prompts[k] for k in fits], max_new_tokens=budget,
                                   batch_size=batch_size)  # fmt: skip
        for k, answer in zip(fits, answers, strict=True):
            out[k] = _cleaned(answer)
    return out


def _cleaned(answer: str) -> str:
    """The rewrite without a leading label a chat model tends to add ("Rewritten text: ...")."""
    head, sep, rest = answer.partition(":")
    if sep and len(head) < 30 and "text" in head.lower():
        answer = rest
    return answer.strip().strip('"').strip()
