"""Per-request sampling: logit bias, banned token sequences, an optional grammar mask, temperature and top-p.

Each row of a batch carries its own settings and its own `torch.Generator`, so a request with a `seed` samples
the same tokens whatever else shares its batch (up to float differences between batch shapes).
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
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def pick(self, logits: torch.Tensor, generated: list[int]) -> int:
        """The next token id, given this row's fp32 `logits` [vocab] and the tokens it generated so far."""
        logits = logits.detach().cpu().clone()
        vocab = logits.shape[0]
        if self.params.logit_bias:
            ids = torch.tensor([i for i in self.params.logit_bias if i < vocab], dtype=torch.long)
            if len(ids):
                logits[ids] += torch.tensor([self.params.logit_bias[int(i)] for i in ids], dtype=logits.dtype)
        for seq in self.params.banned:
            if len(generated) >= len(seq) - 1 and generated[len(generated) - len(seq) + 1 :] == seq[:-1]:
                logits[seq[-1]] = float("-inf")
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
