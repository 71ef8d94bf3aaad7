"""Seeded perturbations of a prompt's text for the robustness suite: typos, case, whitespace, punctuation, prompt
rewording and a distractor sentence (paraphrase needs a model: `paraphrase.py`).

A perturbation is a plain function `(text, rng) -> text`. Each (row, perturbation) pair draws from its own
`random.Random` seeded by the suite seed, the perturbation's name and the row index, so a row's perturbed text does
not depend on which other rows or perturbations are in the suite, and the same seed gives the same suite. Users add
their own by name (`register_perturbation`) or as an import path `package.module:function`.
"""

from __future__ import annotations

import importlib
import random
import string
from collections.abc import Callable
from functools import partial
from typing import cast

from tunelab.core.errors import ConfigError, did_you_mean
from tunelab.core.registry import register

Perturbation = Callable[[str, random.Random], str]

PARAPHRASE = "paraphrase"
"""The perturbation that rewrites with a model; it is run by the suite, not through the registry."""
DEFAULT_TYPO_RATE = 0.05

# Keys next to each other on a QWERTY keyboard: an inserted character is one a finger could slip onto.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {c: "".join(r[j] for j in (i - 1, i + 1) if 0 <= j < len(r)) for r in _ROWS for i, c in enumerate(r)}

TEMPLATES = (
    "Please answer the following. {text}",
    "{text}\nAnswer briefly.",
    "Question: {text}",
    "I need help with this: {text}",
    "{text} Thanks in advance!",
    "Could you tell me? {text}",
)
"""Instruction rewrites around the prompt: the same request in a few other wordings users write."""

DISTRACTORS = (
    "By the way, the weather was lovely yesterday.",
    "My colleague says hello.",
    "This message was sent from a phone.",
    "Unrelated, but I just finished a long book about trains.",
    "Note that the office closes early on Fridays.",
)
"""Sentences that have nothing to do with any task: a robust model answers as if they were not there."""


def typos(text: str, rng: random.Random, rate: float = DEFAULT_TYPO_RATE) -> str:
    """Each letter, with probability `rate`, is swapped with the next letter, dropped, or gets a keyboard neighbour
    inserted after it (one of the three at random)."""
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if not c.isalpha() or rng.random() >= rate:
            out.append(c)
            i += 1
            continue
        kind = rng.choice(("swap", "drop", "insert"))
        if kind == "swap" and i + 1 < len(chars) and chars[i + 1].isalpha():
            out += [chars[i + 1], c]
            i += 2
            continue
        if kind == "insert":
            near = _NEIGHBOURS.get(c.lower(), string.ascii_lowercase)
            out += [c, rng.choice(near)]
        elif kind == "swap":  # nothing to swap with at a word's end: the letter doubles instead
            out += [c, c]
        i += 1
    return "".join(out)


def case_change(text: str, rng: random.Random) -> str:
    """The whole text lower case, upper case, title case, or each letter's case flipped at random."""
    kind = rng.choice(("lower", "upper", "title", "random"))
    if kind == "random":
        return "".join(c.swapcase() if rng.random() < 0.5 else c for c in text)
    return {"lower": text.lower(), "upper": text.upper(), "title": text.title()}[kind]


def whitespace_noise(text: str, rng: random.Random) -> str:
    """Spaces doubled or turned into tabs or newlines (each with probability 0.3), and padding at both ends."""
    out = [c if c != " " or rng.random() >= 0.3 else rng.choice(("  ", "\t", "\n", "   ")) for c in text]
    return rng.choice(("", " ", "\n")) + "".join(out) + rng.choice(("", " ", "  ", "\n"))


def punctuation_noise(text: str, rng: random.Random) -> str:
    """Each punctuation mark dropped with probability 0.5; after each word, a stray mark with probability 0.1."""
    out: list[str] = []
    for i, c in enumerate(text):
        if c in string.punctuation and rng.random() < 0.5:
            continue
        out.append(c)
        word_end = c.isalnum() and (i + 1 == len(text) or not text[i + 1].isalnum())
        if word_end and rng.random() < 0.1:
            out.append(rng.choice(",.;!?"))
    return "".join(out)


def reword_template(text: str, rng: random.Random) -> str:
    """The prompt inside one of the fixed instruction rewrites (`TEMPLATES`)."""
    return rng.choice(TEMPLATES).format(text=text)


def distractor(text: str, rng: random.Random) -> str:
    """An unrelated sentence (`DISTRACTORS`) before or after the prompt."""
    sentence = rng.choice(DISTRACTORS)
    return f"{sentence} {text}" if rng.random() < 0.5 else f"{text} {sentence}"


PERTURBATIONS: dict[str, Perturbation] = {}
register(PERTURBATIONS, "typos", typos, "perturbation")
register(PERTURBATIONS, "case", case_change, "perturbation")
register(PERTURBATIONS, "whitespace", whitespace_noise, "perturbation")
register(PERTURBATIONS, "punctuation", punctuation_noise, "perturbation")
register(PERTURBATIONS, "template", reword_template, "perturbation")
register(PERTURBATIONS, "distractor", distractor, "perturbation")

DEFAULT_PERTURBATIONS = (*PERTURBATIONS, PARAPHRASE)


def register_perturbation(name: str, fn: Perturbation) -> None:
    """Make `fn(text, rng) -> text` available to the robustness suite as `name`."""
    if name == PARAPHRASE:
        raise ValueError(f"perturbation {name!r} is the model paraphrase and cannot be replaced")
    register(PERTURBATIONS, name, fn, "perturbation")


def resolve(name: str, typo_rate: float = DEFAULT_TYPO_RATE) -> Perturbation:
    """The perturbation called `name`: a registered one, or `package.module:function` imported."""
    if name == "typos":
        if not 0 < typo_rate <= 1:
            raise ConfigError(f"--typo-rate must be in (0, 1], got {typo_rate}: it is the chance each letter changes.")
        return partial(typos, rate=typo_rate)
    if name in PERTURBATIONS:
        return PERTURBATIONS[name]
    if ":" not in name:
        known = ", ".join(DEFAULT_PERTURBATIONS)
        raise ConfigError(
            f"Unknown perturbation '{name}'.{did_you_mean(name, DEFAULT_PERTURBATIONS)} Known: {known}; or give your "
            "own as package.module:function (a function taking the text and a random.Random, returning the text)."
        )
    return _imported(name)


def _imported(spec: str) -> Perturbation:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"Perturbation '{spec}': cannot import module '{module_name}' ({exc}). Is it on PYTHONPATH?"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"Perturbation '{spec}': module '{module_name}' has no function '{attr}'.")
    return cast(Perturbation, fn)


def row_rng(seed: int, name: str, row: int) -> random.Random:
    """The random stream of one perturbation on one row (string seeds are hashed the same in every process)."""
    return random.Random(f"{seed}:{name}:{row}")


def apply(fn: Perturbation, text: str, rng: random.Random) -> str:
    """`fn(text, rng)`, checked to return text; any failure is a `PerturbationFailed` the suite notes per row."""
    try:
        out = fn(text, rng)
    except Exception as exc:  # a user's function may raise anything; the row is noted, the suite goes on
        raise PerturbationFailed(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, str):
        raise PerturbationFailed(f"returned {type(out).__name__}, not text")
    if not out.strip():
        raise PerturbationFailed("returned empty text")
    return out


class PerturbationFailed(Exception):
    """A perturbation could not produce a text for one row (noted and counted, not fatal)."""
