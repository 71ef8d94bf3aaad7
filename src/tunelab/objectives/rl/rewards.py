"""Rewards for online RL (GRPO, PPO): Python functions named in the config, and a trained reward model.

A reward function gets the completions and, for each, the prompt's example (its reference answer, when the data
has one) and returns one float per completion. The config lists them with weights; the reward of a completion is
the weighted sum.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section
from tunelab.methods.trained import load_trained, read_run
from tunelab.objectives.classify.heads import load_head_


@dataclass(frozen=True)
class Sample:
    """What a reward function sees of one prompt: its text and the reference answer ('' when there is none)."""

    prompt: str
    reference: str


RewardFn = Callable[[list[str], list[Sample]], list[float]]


class RewardSpec(Section):
    name: Literal["exact_match", "contains", "regex", "json_valid", "length", "python"]
    """`exact_match`: 1 when the completion equals the reference answer (after trimming and lower-casing);
    `contains`: 1 when it contains the reference; `regex`: 1 when `pattern` matches; `json_valid`: 1 when it parses
    as JSON; `length`: 1 - |characters - target| / target, at least 0; `python`: your `function`."""
    weight: float = 1.0
    """Weight of this reward in the sum."""
    pattern: str | None = None
    """The regular expression of `regex` (Python syntax, searched anywhere in the completion)."""
    target: int | None = Field(default=None, ge=1)
    """The ideal completion length in characters, for `length`."""
    function: str | None = None
    """`module:function` for `python`: called as function(completions, samples) -> list of floats, where each
    sample has `.prompt` and `.reference`."""

    @model_validator(mode="after")
    def _needs(self) -> RewardSpec:
        needed = {"regex": "pattern", "length": "target", "python": "function"}.get(self.name)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"reward {self.name} needs `{needed}`")
        return self


def _normal(text: str) -> str:
    return " ".join(text.strip().lower().split())


def exact_match(completions: list[str], samples: list[Sample]) -> list[float]:
    return [float(_normal(c) == _normal(s.reference)) for c, s in zip(completions, samples, strict=True)]


def contains(completions: list[str], samples: list[Sample]) -> list[float]:
    pairs = zip(completions, samples, strict=True)
    return [float(bool(s.reference) and _normal(s.reference) in _normal(c)) for c, s in pairs]


def json_valid(completions: list[str], samples: list[Sample]) -> list[float]:
    def parses(text: str) -> bool:
        try:
            json.loads(text)
        except ValueError:
            return False
        return True

    return [float(parses(c)) for c in completions]


def build_reward_fn(spec: RewardSpec) -> RewardFn:
    """The function a reward spec names."""
    if spec.name == "exact_match":
        return exact_match
    if spec.name == "contains":
        return contains
    if spec.name == "json_valid":
        return json_valid
    # The config's validator makes sure the field each reward needs is set.
    if spec.name == "regex":
        assert spec.pattern is not None
        pattern = re.compile(spec.pattern)
        return lambda completions, samples: [float(pattern.search(c) is not None) for c in completions]
    if spec.name == "length":
        target = spec.target
        assert target is not None
        return lambda completions, samples: [max(0.0, 1 - abs(len(c) - target) / target) for c in completions]
    assert spec.function is not None
    module_name, _, attr = spec.function.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Reward function '{spec.function}' cannot be imported ({exc}). Give it as 'module:function', with the "
            "module importable from where tunelab runs."
        ) from None


def combined(specs: list[RewardSpec]) -> Callable[[list[str], list[Sample]], torch.Tensor]:
    """The weighted sum of the configured reward functions, as a tensor (one value per completion)."""
    fns = [(spec.weight, build_reward_fn(spec)) for spec in specs]

    def score(completions: list[str], samples: list[Sample]) -> torch.Tensor:
        total = torch.zeros(len(completions))
        for weight, fn in fns:
            total += weight * torch.tensor(fn(completions, samples), dtype=torch.float32)
        return total

    return score


class RewardModelScorer:
    """Scores (prompt + completion) token rows with a reward model trained by objective `reward` (a run folder)."""

    def __init__(self, run: str, device: torch.device, vocab: dict[str, int]) -> None:
        body, tokenizer = load_trained(run)
        folder = read_run(run).artifact
        if tokenizer.get_vocab() != vocab:
            raise ConfigError(
                f"Reward model '{run}' uses another tokenizer than the policy; train it from the policy's base model."
            )
        self.model: nn.Module = load_head_(body, folder).to(device)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask).squeeze(-1).float()
