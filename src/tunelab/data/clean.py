"""Cleaning: normalise every text, mask personal data, and filter noisy records, saying which filter took what.

`Cleaner.clean` turns one record into a cleaned record or a `Removed` naming the filter. Duplicates are not
handled here (they need the whole dataset): see `dedup.py`.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tunelab.data.records import Example, Removed

if TYPE_CHECKING:
    from tunelab.data.config import CleanSection

# C0/C1 control characters except tab and newline, plus zero-width and byte-order marks: invisible, they only
# split tokens and defeat duplicate detection.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAK = re.compile(r"<(br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<!--.*?-->", re.DOTALL)

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "ip": re.compile(
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])"
    ),
    # A phone number: an optional +country code, then digit groups joined by spaces, dots, dashes or
    # parentheses. Whether it really is one (7 to 15 digits, not a date) is checked in `_mask_phone`.
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{1,4}){1,5}(?![\w-])"
        r"|(?<![\w+])\+\d{7,15}(?!\w)"
    ),
}
PII_MASKS = {"email": "[EMAIL]", "ip": "[IP]", "phone": "[PHONE]"}
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_WORDS = re.compile(r"\w+")
_REQUIRED = {
    "text": ("text",),
    "preference": ("chosen", "rejected"),
    "classification": ("text",),
    "pairs": ("anchor", "positive"),
    "token_classification": ("text",),
}
"""The texts each kind of record (other than chat, whose trainable answers are) needs non-empty."""
TRIVIAL_ANSWERS = {"n/a", "na", "null", "nan", "none.", "todo", "tbd", "lorem ipsum", "...", "-", "?"}


def normalise(
    text: str,
    unicode_form: Literal["NFC", "NFD", "NFKC", "NFKD", "none"] = "NFKC",
    whitespace: bool = True,
    control: bool = True,
    strip_html: bool = False,
) -> str:
    """One text cleaned: HTML stripped (optional), Unicode normalised, control characters removed, and
    whitespace tidied (line endings unified, trailing spaces and runs of blank lines removed, ends stripped).
    Spaces inside a line are kept: they are indentation in code answers."""
    if strip_html:
        text = _TAG.sub("", _BREAK.sub("\n", _SCRIPT.sub("", text)))
        text = html.unescape(text)
    if text.isascii() and text.isprintable():
        # Printable ASCII: already in every Unicode form, no control characters, no line breaks (most rows).
        return text.strip() if whitespace else text
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    if control:
        text = _CONTROL.sub("", text)
    if whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("\n", text)).strip()
    return text


def _mask_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(c.isdigit() for c in found)
    if not 7 <= digits <= 15 or _DATE.fullmatch(found.strip()) or re.fullmatch(r"[\d.]+", found):
        return found  # a version number, a date or a decimal, not a phone number
    return PII_MASKS["phone"]


def mask_pii(text: str, kinds: Collection[str], counts: Counter[str] | None = None) -> str:
    """Replace e-mail addresses, IP addresses and phone numbers (those in `kinds`) with [EMAIL], [IP], [PHONE]."""
    # IPs before phones: an IPv4 address would otherwise read as a dotted phone number.
    for kind in ("email", "ip", "phone"):
        if kind not in kinds:
            continue
        replace = _mask_phone if kind == "phone" else (lambda _m, k=kind: PII_MASKS[k])
        new, n = PII_PATTERNS[kind].subn(replace, text)
        if n and counts is not None:
            counts[kind] += new.count(PII_MASKS[kind]) - text.count(PII_MASKS[kind])
        text = new
    return text


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of the word n-grams that repeat an earlier one (0 for varied text, near 1 for 'la la la la')."""
    words = _WORDS.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def non_letter_ratio(text: str) -> float:
    """Share of the non-space characters that are not letters (symbols, digits, punctuation)."""
    chars = [c for c in text if not c.isspace()]
    return sum(not c.isalpha() for c in chars) / len(chars) if chars else 0.0


def is_trivial(answer: str, min_chars: int) -> bool:
    """An answer with nothing to learn: no letter or digit, a placeholder ('N/A', 'TODO'), or too short."""
    stripped = answer.strip()
    return not any(c.isalnum() for c in stripped) or stripped.lower() in TRIVIAL_ANSWERS or len(stripped) < min_chars


@dataclass
class CleanStats:
    """What cleaning did, per filter; merged across chunks."""

    removed: Counter[str] = field(default_factory=Counter)
    changed: int = 0
    """Records whose text normalisation changed."""
    pii: Counter[str] = field(default_factory=Counter)

    def merge(self, other: CleanStats) -> None:
        self.removed.update(other.removed)
        self.changed += other.changed
        self.pii.update(other.pii)


class Cleaner:
    """Applies the `data.clean` settings to one record at a time (picklable, so it runs in worker processes)."""

    def __init__(self, cfg: CleanSection) -> None:
        self.cfg = cfg

    def clean(self, example: Example, stats: CleanStats) -> Example | Removed:
        """The cleaned record, or a `Removed` naming the filter that took it; `stats` counts what happened."""
        pii, changed = Counter(), [False]
        cleaned = example.map_texts(self._text_fn(pii, changed))
        stats.changed += changed[0]
        if pii:
            stats.pii.update(pii)
        reason = _emptied(cleaned)
        name = "normalize"
        if reason is None:
            name, reason = self._filter(cleaned)
        if reason is not None:
            stats.removed[name] += 1
            return Removed(origin=example.origin, filter=name, reason=reason, record=example.to_row())
        return cleaned

    def _text_fn(self, pii: Counter[str], changed: list[bool]):
        """The cleaning of one text; it counts masked personal data into `pii` and sets `changed[0]` when a
        text comes out different."""
        cfg = self.cfg

        def fn(text: str) -> str:
            new = normalise(text, cfg.unicode, cfg.whitespace, cfg.remove_control, cfg.strip_html)
            new = mask_pii(new, cfg.pii, pii) if cfg.pii else new
            if new != text:
                changed[0] = True
            return new

        return fn

    def _filter(self, ex: Example) -> tuple[str, str | None]:
        cfg = self.cfg
        if cfg.min_chars is not None or cfg.max_chars is not None:
            n = sum(len(t) for _, t in ex.texts())
            if cfg.min_chars is not None and n < cfg.min_chars:
                return "length_chars", f"{n} characters, fewer than clean.min_chars={cfg.min_chars}"
            if cfg.max_chars is not None and n > cfg.max_chars:
                return "length_chars", f"{n} characters, more than clean.max_chars={cfg.max_chars}"
        if cfg.min_answer_chars is not None:
            for name, answer in ex.answers():
                if is_trivial(answer, cfg.min_answer_chars):
                    return "trivial_answer", f"{name} is a trivial answer ({answer[:40]!r})"
        if cfg.max_repeated_ngram_ratio is not None:
            ratio = repeated_ngram_ratio(ex.content())
            if ratio > cfg.max_repeated_ngram_ratio:
                return "repeated_ngrams", (
                    f"{ratio:.0%} of its word 3-grams are repeats, more than clean.max_repeated_ngram_ratio="
                    f"{cfg.max_repeated_ngram_ratio}"
                )
        if cfg.max_non_letter_ratio is not None:
            ratio = non_letter_ratio(ex.content())
            if ratio > cfg.max_non_letter_ratio:
                return "non_letter", (
                    f"{ratio:.0%} of its characters are not letters, more than clean.max_non_letter_ratio="
                    f"{cfg.max_non_letter_ratio}"
                )
        return "", None


def _emptied(ex: Example) -> str | None:
    """A required text that normalisation left empty (it held only whitespace, control characters or HTML)."""
    if ex.kind == "chat":
        required = [
            (f"messages[{i}]", m.content) for i, m in enumerate(ex.messages) if m.role == "assistant" and m.trainable
        ]
    else:
        required = [(name, getattr(ex, name)) for name in _REQUIRED[ex.kind]]
    for name, text in required:
        if not text:
            return f"{name} is empty after normalisation (it held only whitespace, control characters or markup)"
    return None
