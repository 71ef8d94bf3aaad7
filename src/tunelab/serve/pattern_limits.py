"""Static limits on constraint patterns, checked before anything is compiled.

Compiling a regex into a token automaton costs time and memory that grow with the pattern's expanded size:
`x{N}` is N copies of `x`, and counts nested inside each other multiply (`(x{20}){20}` is 400 copies). These
checks refuse such patterns in microseconds with a message naming the limit, so they never reach the compiler.
They cannot catch every expensive pattern (`[ab]*a[ab]{20}` is short, with small counts, yet its automaton has
2^20 states); the compile process's time and memory limits (`tunelab.serve.compile_pool`) catch the rest.

Patterns are parsed with Python's own regex parser. outlines-core reads Rust regex syntax, which is nearly the
same; for the few Rust-only forms Python rejects (`\\p{L}`, `\\z`, ...), the counts are read off the text instead.

This module imports only the standard library: it also runs inside the compile processes.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

try:  # Python 3.11+
    from re import _constants as sre_constants  # pyright: ignore[reportAttributeAccessIssue]
    from re import _parser as sre_parse  # pyright: ignore[reportAttributeAccessIssue]
except ImportError:  # Python 3.10
    import sre_constants  # pyright: ignore[reportMissingImports]
    import sre_parse  # pyright: ignore[reportMissingImports]

MAXREPEAT = int(sre_constants.MAXREPEAT)
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_COUNTED = re.compile(r"\{(\d+)(?:,(\d*))?\}")


@dataclass(frozen=True)
class PatternLimits:
    """The static limits (`ServeConfig.max_pattern_chars` and `max_pattern_repeat`)."""

    max_chars: int = 10_000
    max_repeat: int = 256


class PatternLimitError(ValueError):
    """A pattern over a static limit; the message names the limit, the value and the server flag."""


def check_length(text: str, limits: PatternLimits, what: str) -> None:
    """Refuse `text` (a regex, or a JSON schema's text) longer than `limits.max_chars`."""
    if len(text) > limits.max_chars:
        raise PatternLimitError(
            f"The {what} is {len(text)} characters long; the limit is {limits.max_chars} (the server's "
            "--max-pattern-chars). Send a shorter pattern."
        )


def check_repeats(pattern: str, limits: PatternLimits, what: str) -> None:
    """Refuse a regex whose counted repetitions (`{N}`, `{N,M}`), alone or nested, exceed `limits.max_repeat`."""
    try:
        largest, nested = repeat_counts(pattern)
    except RecursionError:  # groups nested hundreds deep: Python's parser gives up, and so do we
        raise PatternLimitError(
            f"The {what} nests groups too deeply to be checked; flatten the pattern (fewer nested parentheses)."
        ) from None
    cap = limits.max_repeat
    flag = "the server's --max-pattern-repeat"
    if largest > cap:
        raise PatternLimitError(
            f"The {what} repeats a part {largest} times; the limit is {cap} ({flag}). Use a smaller count "
            "(`{N}`, `{N,M}`; in a JSON schema: maxLength, minLength, maxItems, minItems), or `*` / `+`."
        )
    if nested > cap:
        raise PatternLimitError(
            f"The {what} nests counted repetitions that multiply to {nested} copies (e.g. `(x{{20}}){{20}}` is "
            f"400); the limit is {cap} ({flag}). Use smaller counts, or `*` / `+` for one of them."
        )


def repeat_counts(pattern: str) -> tuple[int, int]:
    """(the largest single repetition count, the largest product of counts nested inside each other).

    `*`, `+` and `?` count as 1: they loop or choose, they do not copy. `{N,}` counts N. Raises RecursionError
    for groups nested too deeply for Python's parser."""
    try:
        with warnings.catch_warnings():  # "possible nested set" and similar notes about Rust-like classes
            warnings.simplefilter("ignore")
            parsed = sre_parse.parse(pattern)
    except OverflowError:  # a count past 2^32 - 1
        return MAXREPEAT, MAXREPEAT
    except re.error:  # Rust-only syntax: read each count off the text (nesting is not known then)
        largest = max((_count(m.group(1), m.group(2)) for m in _COUNTED.finditer(pattern)), default=1)
        return largest, largest
    largest, nested = 1, 1
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:  # iterative: a deep pattern must not exhaust the interpreter's stack here
        node, outer = stack.pop()
        for op, arg in _items(node):
            name = str(op)
            if name in _REPEATS:
                low, high, body = arg
                count = max(low if high == MAXREPEAT else high, 1)
                largest = max(largest, count)
                nested = max(nested, outer * count)
                stack.append((body, outer * count))
            elif name == "SUBPATTERN":
                stack.append((arg[-1], outer))
            elif name == "BRANCH":
                stack.extend((branch, outer) for branch in arg[1])
            elif name == "ATOMIC_GROUP":
                stack.append((arg, outer))
            elif name in ("ASSERT", "ASSERT_NOT"):
                stack.append((arg[1], outer))
            elif name == "GROUPREF_EXISTS":
                stack.extend((branch, outer) for branch in arg[1:] if branch is not None)
    return largest, nested


def _items(node: Any) -> list[tuple[Any, Any]]:
    # A parsed SubPattern keeps its (op, argument) items in `data`; some arguments are plain lists of items.
    return list(getattr(node, "data", node))


def _count(low: str, high: str | None) -> int:
    return max(int(low), int(high) if high else 0, 1)
