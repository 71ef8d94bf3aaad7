"""k-shot prompts: demonstrations from a pool of solved examples, chosen at random or by embedding similarity.

Each evaluation example becomes a new `Example` whose messages are the demonstrations followed by its own turns,
its reference answer still last, so `generation_metrics` scores it exactly as it scores a fine-tuned model.
Demonstrations are either chat turns (user, assistant, user, assistant, ..., the question) or one inline user
message ("Input: ... / Output: ..."), for models that follow chat turns poorly.

With `similar`, the most similar demonstration is placed last, next to the question (Liu et al. 2022 found the
order that puts the nearest example closest to the query works best). A pool example whose prompt equals the
question's is never shown: it would hand the model the answer.

Given a `ContextLimit`, every prompt is measured against the model's context and an overlong one is refused or
shortened by an explicit policy (`fewshot.context`); without one, prompts are built as long as k makes them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.eval.fewshot.context import ContextLimit
from tunelab.models.pooling import encode

Strategy = Literal["random", "similar"]
Layout = Literal["turns", "inline"]
Embed = Callable[[list[str]], torch.Tensor]


def question_text(example: Example) -> str:
    """The text an example asks: its user turns before the reference answer, joined."""
    prompt, _ = example.prompt_and_answer()
    return "\n".join(m.content for m in prompt if m.role == "user")


def select_shots(
    examples: Sequence[Example],
    pool: Sequence[Example],
    k: int,
    *,
    strategy: Strategy = "random",
    seed: int = 0,
    embed: Embed | None = None,
) -> list[list[int]]:
    """Indices into `pool` of the k demonstrations for each example (for `similar`: least to most similar)."""
    questions = [question_text(ex) for ex in examples]
    pool_questions = [question_text(ex) for ex in pool]
    if k == 0:
        return [[] for _ in examples]
    if strategy == "random":
        chosen = []
        for i, q in enumerate(questions):
            allowed = [j for j, p in enumerate(pool_questions) if p != q]
            _enough(len(allowed), k)
            chosen.append(random.Random(f"{seed}:{i}").sample(allowed, k))
        return chosen
    if embed is None:
        raise ValueError("strategy 'similar' needs an embed function (e.g. fewshot.prompts.encoder_embed)")
    q_vecs, p_vecs = embed(questions), embed(pool_questions)
    scores = q_vecs.float() @ p_vecs.float().T
    chosen = []
    for i, q in enumerate(questions):
        same = torch.tensor([p == q for p in pool_questions])
        _enough(int((~same).sum()), k)
        row = scores[i].masked_fill(same, float("-inf"))
        chosen.append(row.topk(k).indices.flip(0).tolist())
    return chosen


def kshot_examples(
    examples: Sequence[Example],
    pool: Sequence[Example],
    k: int,
    *,
    strategy: Strategy = "random",
    seed: int = 0,
    embed: Embed | None = None,
    layout: Layout = "turns",
    instruction: str | None = None,
    limit: ContextLimit | None = None,
) -> list[Example]:
    """`examples` with k demonstrations from `pool` before each question (k = 0: zero-shot).

    `instruction`, when given, opens the conversation as a system turn (turns) or the first paragraph (inline).
    An example's own system turn is kept and goes first. With `limit`, each prompt is measured (`meta`:
    `prompt_tokens`, `shots_dropped`) and one longer than the limit is refused or shortened as its policy says.
    """
    for ex in (*examples, *pool):
        if not any(m.role == "assistant" for m in ex.messages):
            raise DataError(
                f"{ex.origin or 'an example'}: no assistant turn, so it can be neither a demonstration nor scored. "
                "Few-shot baselines need chat examples with a reference answer."
            )
    shots = select_shots(examples, pool, k, strategy=strategy, seed=seed, embed=embed)
    return [
        _fitted(ex, [pool[j] for j in idx], layout, instruction, limit) for ex, idx in zip(examples, shots, strict=True)
    ]


def encoder_embed(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32) -> Embed:
    """An `embed` function from an encoder (e.g. `load_model("minilm-l6")`): mean-pooled, unit-length vectors."""

    return lambda texts: encode(model, tokenizer, texts, batch_size=batch_size)


def _fitted(
    example: Example, shots: list[Example], layout: Layout, instruction: str | None, limit: ContextLimit | None
) -> Example:
    """The k-shot example, shortened from its first (farthest) demonstration while over the limit under `drop`."""
    built = _with_shots(example, shots, layout, instruction)
    if limit is None:
        return built
    tokens, kept = limit.count(built), list(shots)
    while tokens > limit.max_tokens:
        if limit.overflow == "error" or not kept:
            raise DataError(limit.too_long(example, tokens, len(kept)))
        kept = kept[1:]
        built = _with_shots(example, kept, layout, instruction)
        tokens = limit.count(built)
    return replace(built, meta={**built.meta, "prompt_tokens": tokens, "shots_dropped": len(shots) - len(kept)})


def _with_shots(example: Example, shots: list[Example], layout: Layout, instruction: str | None) -> Example:
    prompt, answer = example.prompt_and_answer()
    system = [m for m in prompt if m.role == "system"]
    turns = [m for m in prompt if m.role != "system"]
    if layout == "inline":
        blocks = [f"Input: {question_text(s)}\nOutput: {s.prompt_and_answer()[1]}" for s in shots]
        text = "\n\n".join(
            [*([instruction] if instruction else []), *blocks, f"Input: {question_text(example)}\nOutput:"]
        )
        messages = [*system, Message("user", text), Message("assistant", answer)]
    else:
        demos = []
        for s in shots:
            s_prompt, s_answer = s.prompt_and_answer()
            demos += [m for m in s_prompt if m.role != "system"] + [Message("assistant", s_answer)]
        head = [Message("system", instruction)] if instruction and not system else system
        if instruction and system:
            head = [Message("system", instruction + "\n\n" + system[0].content), *system[1:]]
        messages = [*head, *demos, *turns, Message("assistant", answer)]
    return replace(example, messages=messages, meta={**example.meta, "shots": [s.origin for s in shots]})


def _enough(available: int, k: int) -> None:
    if available < k:
        raise DataError(
            f"The demonstration pool has {available} usable example(s) for a question, fewer than k={k}. "
            "Use a larger pool (e.g. the training split) or a smaller k."
        )
