"""Per-request sampling: logit bias, banned token sequences, an optional grammar mask, temperature and top-p.

Each row of a batch carries its own settings and its own `torch.Generator`, so a request with a `seed` samples
the same tokens whatever else shares its batch (up to float differences between batch shapes).

Banned sequences are indexed once per sequence by their prefix, so each step looks up the last few generated
tokens instead of comparing against every banned sequence (thousands of banned words cost a dict lookup per
distinct prefix length, not a scan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class Constraint(Protocol):
    """A grammar that says which tokens may come next (see `tunelab.serve.constraints`)."""

    def allowed(self) -> list[int]: ...

    def advance(self, token_id: int) -> None: ...

    def is_finished(self) -> bool: ...


@dataclass
class SamplingParams:
    """How one sequence is decoded. `temperature=0` is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    banned: list[list[int]] = field(default_factory=list)
    """Token sequences that must not appear; the last token of each is blocked when the rest was just written."""


class Sampler:
    """Picks one sequence's next token from its logits, honouring its `SamplingParams` and constraint."""

    def __init__(self, params: SamplingParams, constraint: Constraint | None = None) -> None:
        self.params = params
        self.constraint = constraint
        self.banned = banned_index(params.banned)
        # logit_bias as two tensors, built once: a request may bias thousands of tokens.
        self.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        self.bias_values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
        self.generator = torch.Generator()
        if params.seed is not None:
            # torch takes seeds in [-2^63, 2^64); any integer maps into that range the same way every time.
            self.generator.manual_seed(params.seed % 2**64)
        else:
            self.generator.seed()

    def pick(self, logits: torch.Tensor, generated: list[int]) -> int:
        """The next token id, given this row's fp32 `logits` [vocab] and the tokens it generated so far."""
        logits = logits.detach().cpu().clone()
        vocab = logits.shape[0]
        if len(self.bias_ids):
            inside = self.bias_ids < vocab
            logits[self.bias_ids[inside]] += self.bias_values[inside].to(logits.dtype)
        for length, after in self.banned.items():
            if length <= len(generated):
                blocked = after.get(tuple(generated[len(generated) - length :]) if length else ())
                if blocked:
                    logits[[t for t in blocked if t < vocab]] = float("-inf")
        if self.constraint is not None:
            allowed = torch.tensor([i for i in self.constraint.allowed() if i < vocab], dtype=torch.long)
            masked = torch.full_like(logits, float("-inf"))
            masked[allowed] = logits[allowed]
            logits = masked
        if self.params.temperature <= 0:
            token = int(logits.argmax())
        else:
            token = _sample(logits / self.params.temperature, self.params.top_p, self.generator)
        if self.constraint is not None:
            self.constraint.advance(token)
        return token


def banned_index(sequences: list[list[int]]) -> dict[int, dict[tuple[int, ...], set[int]]]:
    """Banned sequences by prefix: {prefix length: {prefix: last tokens banned right after it}}."""
    index: dict[int, dict[tuple[int, ...], set[int]]] = {}
    for seq in sequences:
        if seq:
            index.setdefault(len(seq) - 1, {}).setdefault(tuple(seq[:-1]), set()).add(seq[-1])
    return index


def _sample(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p; the first token is always kept.
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if not torch.isfinite(probs).all() or probs.sum() <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))
