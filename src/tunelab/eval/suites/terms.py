"""Term lists for the bias probe: for one attribute (gender, names, religion, ...), lines of the same term in each
of its groups, and the swap of every term in a text into one group.

A list is a small text file (`terms/*.txt` ship with tunelab; users give their own): `#` comments, a first line
`groups: a | b | ...`, then one line per term with one form per group, separated by `|`. A word belongs to one line
only, so a swap is never ambiguous; the attribute is the file's stem. Matching is on whole words, ignoring case, and
a replacement takes the case of the word it replaces (Man -> Woman, HE -> SHE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from tunelab.core.errors import ConfigError, DataError, did_you_mean

SHIPPED = ("gender", "names", "religion", "age", "nationality")


@dataclass(frozen=True)
class Match:
    """A term found in a text: where, which line of the list, and which group it belongs to."""

    start: int
    end: int
    line: int
    group: int


@dataclass(frozen=True)
class TermList:
    """The terms of one attribute: `lines[i][g]` is line i's term in group g."""

    attribute: str
    groups: tuple[str, ...]
    lines: tuple[tuple[str, ...], ...]
    source: str

    @cached_property
    def _index(self) -> dict[str, tuple[int, int]]:
        return {term.lower(): (i, g) for i, line in enumerate(self.lines) for g, term in enumerate(line)}

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        terms = sorted(self._index, key=len, reverse=True)  # longest first: "Chinese people" before "Chinese"
        return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, terms)) + r")(?![\w-])", re.IGNORECASE)

    def find(self, text: str) -> list[Match]:
        """Every whole-word occurrence of a term, left to right."""
        return [Match(m.start(), m.end(), *self._index[m.group(0).lower()]) for m in self._pattern.finditer(text)]

    def swap(self, text: str, group: int) -> str:
        """`text` with every term replaced by the same line's term of `group`, in the replaced word's case."""
        out, last = [], 0
        for match in self.find(text):
            out += [text[last : match.start], _same_case(text[match.start : match.end], self.lines[match.line][group])]
            last = match.end
        return "".join(out) + text[last:]

    def slot(self) -> str:
        """The placeholder a template writes for this attribute: `{gender}`."""
        return "{" + self.attribute + "}"


def _same_case(original: str, term: str) -> str:
    """`term` in the case of the word it replaces: all capitals, a capital first letter, or as the list writes it."""
    if original.isupper() and len(original) > 1:
        return term.upper()
    if original[:1].isupper():
        return term[:1].upper() + term[1:]
    return term


def parse_terms(text: str, source: str, attribute: str) -> TermList:
    """Read a term list (see the module's docstring); a bad line is a DataError naming `source:line`."""
    groups: tuple[str, ...] | None = None
    lines: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        if groups is None:
            groups = _groups(line, where)
            continue
        terms = tuple(t.strip() for t in line.split("|"))
        if len(terms) != len(groups) or not all(terms):
            raise DataError(
                f"{where}: {len(terms)} term(s) ({line!r}), but the groups line names {len(groups)} "
                f"({' | '.join(groups)}). Write one non-empty term per group, separated by '|'."
            )
        for term in terms:
            if term.lower() in seen:
                raise DataError(
                    f"{where}: '{term}' is already on line {seen[term.lower()]}; a term may be on one "
                    "line only, or a swap would not know which counterpart to use."
                )
            seen[term.lower()] = number
        lines.append(terms)
    if groups is None or not lines:
        raise DataError(
            f"{source}: no {'groups line' if groups is None else 'terms'}. A term list starts with "
            "'groups: a | b' and has one line per term below it ('he | she')."
        )
    return TermList(attribute, groups, tuple(lines), source)


def _groups(line: str, where: str) -> tuple[str, ...]:
    key, sep, rest = line.partition(":")
    names = tuple(g.strip() for g in rest.split("|"))
    if key.strip().lower() != "groups" or not sep or len(names) < 2 or not all(names) or len(set(names)) < len(names):
        raise DataError(
            f"{where}: expected the groups line, e.g. 'groups: male | female' (two or more distinct "
            f"names separated by '|'), got {line!r}."
        )
    return names


def shipped_terms(attribute: str) -> TermList:
    """A term list tunelab ships (`SHIPPED`)."""
    if attribute not in SHIPPED:
        raise ConfigError(
            f"No shipped term list '{attribute}'.{did_you_mean(attribute, SHIPPED)} Shipped: "
            f"{', '.join(SHIPPED)}; give your own with --terms FILE."
        )
    data = resources.files("tunelab.eval.suites").joinpath("terms", f"{attribute}.txt")
    return parse_terms(data.read_text(encoding="utf-8"), f"terms/{attribute}.txt", attribute)


def user_terms(path: str | Path) -> TermList:
    """A user's term list file; its attribute is the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Term list '{path}' does not exist. Give a text file of 'groups: a | b' and term lines.")
    return parse_terms(path.read_text(encoding="utf-8"), str(path), path.stem)


def term_lists(attributes: list[str] | None, files: list[str] | None) -> list[TermList]:
    """The lists to probe: the named shipped ones (all when none is named and no file given) and the user's files
    (a user file replaces a shipped list of the same attribute)."""
    own = [user_terms(f) for f in files or []]
    names = attributes if attributes is not None else ([] if own else list(SHIPPED))
    chosen = {t.attribute: t for t in own}
    for name in names:
        if name not in chosen:
            chosen[name] = shipped_terms(name)
    return list(chosen.values())
