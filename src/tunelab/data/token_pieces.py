"""Chat rows tokenised in pieces: a shape's literal pieces once, only the contents per row.

A chat row rendered through a cached shape (data.chat_shapes) is its contents between the shape's literal pieces
(role headers, the default system prompt, end-of-turn tokens). Tokenising the whole text again for every row spends
a third of the tokenizer's time on those literals, and mapping characters to tokens through offsets costs as much
again in Python. When the tokenizer splits the text at every seam between a literal and a content, the row's ids
are the literals' ids (tokenised once per shape) and the contents' ids (one batch per chunk) put together, and
which tokens carry loss follows from which pieces lie inside the shape's loss spans.

Whether a seam splits depends on the characters either side of it: the pre-tokenizer's rules read character
classes (letters, digits, whitespace runs, apostrophes), special tokens split the text before any rule runs, and a
normaliser or a sentencepiece prefix changes what a piece starts with. So each seam is keyed by the literal beside
it and the class of the content's edge character (with any whitespace run at that edge spelt out), and trusted only
after `TRUST_AFTER` rows with that key came out the same both ways; a key seen differing once is never trusted, and
its rows are always tokenised whole. Rows with an untrusted key are tokenised whole (the result used) and in pieces
(only compared), so the check costs one extra content batch on the first rows of each kind.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any, cast

import regex
from tokenizers import Tokenizer

from tunelab.data.chat_shapes import Shape

IGNORE = -100
TRUST_AFTER = 3
"""Rows with the same seam keys that must agree with whole-text tokenisation before the pieces are used alone."""
EDGE_SPACES = 8
"""Longest whitespace run at a content's edge spelt out in its seam key (longer runs share one key)."""

SeamKey = tuple[int, int, str]
"""(literal index, side: 0 the content's start and 1 its end, the edge's character class)."""


@dataclass
class ShapePieces:
    """A shape's literals as token ids, which of their tokens carry loss, and which contents lie inside a loss span."""

    literal_ids: list[list[int]]
    literal_labels: list[list[int]]
    content_in_loss: list[bool]
    literal_targets: int = 0
    """Loss tokens among the literals' tokens."""
    trust: dict[SeamKey, int] = field(default_factory=dict)
    """Per seam key: rows that agreed so far, or -1 once one differed."""

    def seams(self, contents: list[str]) -> list[SeamKey]:
        """The seam keys of a row with these contents (two per content)."""
        keys = []
        for k, text in enumerate(contents):
            keys.append((k, 0, edge_class(text, start=True)))
            keys.append((k + 1, 1, edge_class(text, start=False)))
        return keys

    def trusted(self, keys: list[SeamKey]) -> bool:
        return all(self.trust.get(key, 0) >= TRUST_AFTER for key in keys)

    def on_trial(self, keys: list[SeamKey]) -> list[SeamKey]:
        """The keys among `keys` neither trusted yet nor seen differing."""
        return [key for key in keys if 0 <= self.trust.get(key, 0) < TRUST_AFTER]

    def record(self, keys: list[SeamKey], agreed: bool) -> None:
        """What one row compared both ways said about its seams."""
        for key in keys:
            seen = self.trust.get(key, 0)
            if seen >= 0:
                self.trust[key] = min(seen + 1, TRUST_AFTER) if agreed else -1

    def assemble(self, content_ids: list[list[int]]) -> tuple[list[int], list[int], int]:
        """The row's ids, labels and number of loss tokens from its contents' ids."""
        ids, labels, targets = list(self.literal_ids[0]), list(self.literal_labels[0]), 0
        for k, piece in enumerate(content_ids):
            ids += piece
            if self.content_in_loss[k]:
                labels += piece
                targets += len(piece)
            else:
                labels += [IGNORE] * len(piece)
            ids += self.literal_ids[k + 1]
            labels += self.literal_labels[k + 1]
        return ids, labels, targets + self.literal_targets


def edge_class(text: str, start: bool) -> str:
    """A content's edge as the pre-tokenizer sees it: the whitespace run there spelt out, then the next character's
    class ('' for an empty content). Apostrophes (contractions) and ASCII whitespace are their own classes."""
    if not text:
        return ""
    edge = text[0] if start else text[-1]
    if not edge.isspace():  # most contents: no whitespace run at the edge, the class is the character's
        return _char_class(edge)
    stripped = text.lstrip() if start else text.rstrip()
    run = text[: len(text) - len(stripped)] if start else text[len(stripped) :]
    if len(run) > EDGE_SPACES:
        run = "long"
    if not stripped:
        return run + "|"
    return run + _char_class(stripped[0] if start else stripped[-1])


@lru_cache(maxsize=8192)
def _char_class(c: str) -> str:
    return "|" + (c if c == "'" else unicodedata.category(c))


def shape_pieces(backend: Tokenizer, shape: Shape, label_all: bool) -> ShapePieces:
    """Tokenise a shape's literals once: their ids, and labels for the literal tokens inside a loss span (all tokens
    with `label_all`)."""
    starts = [0]
    for literal in shape.literals[:-1]:
        starts.append(starts[-1] + len(literal) + 1)  # each content counts as one character between its literals
    spans = [(0, starts[-1] + len(shape.literals[-1]))] if label_all else [
        (starts[a] + i, starts[b] + j) for (a, i), (b, j) in shape.edges
    ]  # fmt: skip
    ids, labels = [], []
    for k, literal in enumerate(shape.literals):
        enc = backend.encode(literal, add_special_tokens=False) if literal else None
        piece = list(enc.ids) if enc is not None else []
        offsets = enc.offsets if enc is not None else []
        ids.append(piece)
        labels.append([
            t if any(starts[k] + s < hi and starts[k] + e > lo for lo, hi in spans) else IGNORE
            for t, (s, e) in zip(piece, offsets, strict=True)
        ])  # fmt: skip
    inside = [any(lo <= starts[k] + len(shape.literals[k]) < hi for lo, hi in spans) for k in range(len(starts) - 1)]
    return ShapePieces(ids, labels, inside, sum(t != IGNORE for piece in labels for t in piece))


class PieceCache:
    """The `ShapePieces` of every shape met so far, with their seams' trust (kept across chunks of one run)."""

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        self.contents = ContentTokenizer(backend)
        self._pieces: dict[tuple[Shape, bool], ShapePieces] = {}

    def get(self, shape: Shape, label_all: bool) -> ShapePieces:
        key = (shape, label_all)
        if key not in self._pieces:
            self._pieces[key] = shape_pieces(self.backend, shape, label_all)
        return self._pieces[key]


GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The pattern of a byte-level pre-tokenizer with `use_regex` (GPT-2's, as the tokenizers library writes it)."""
WORDS_KEPT = 500_000
"""Words whose ids are remembered at most (the memory is cleared when full)."""
CHECK_FIRST, CHECK_EVERY = 256, 512
"""Contents also tokenised by the library to check the word path: the first ones, then one in CHECK_EVERY."""


class ContentTokenizer:
    """Token ids of many texts, word by word from a memory of the words seen, where the tokenizer allows it.

    A byte-level BPE tokenizer without a normaliser cuts a text into words by regular expressions and encodes each
    word on its own; the same word always gives the same ids. So the words are cut here with the same expressions
    (read from the tokenizer's own configuration) and looked up, and only new words go to the tokenizer: on short
    chat rows five times the library's batch speed. Any other pipeline (a normaliser, a sentencepiece prefix, a
    pre-tokenizer not listed here), and a text holding an added token's text, goes to the library's batch call.
    The first `CHECK_FIRST` texts and one in `CHECK_EVERY` after are tokenised both ways; one difference turns the
    word path off for good (that text's library ids are used)."""

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        self.splits = word_splits(json.loads(backend.to_str()))
        added = sorted((t.content for t in backend.get_added_tokens_decoder().values()), key=len, reverse=True)
        self.added = regex.compile("|".join(regex.escape(t) for t in added)) if added else None
        self.words: dict[str, list[int]] = {}
        self.seen = 0

    @property
    def by_words(self) -> bool:
        return self.splits is not None

    def ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.splits is None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        out: list[list[int] | None] = []
        for text in texts:
            out.append(None if self.added is not None and self.added.search(text) else self._words(text))
        checked = [k for k in range(len(texts)) if out[k] is None or self._checks(k)]
        library = self.backend.encode_batch([texts[k] for k in checked], add_special_tokens=False) if checked else []
        for k, enc in zip(checked, library, strict=True):
            if out[k] is not None and out[k] != enc.ids:
                self.splits = None  # the word path disagreed once: the library tokenises from now on
            out[k] = enc.ids
        self.seen += len(texts)
        if self.splits is None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return cast(list[list[int]], out)  # every text without word ids got the library's above

    def _checks(self, k: int) -> bool:
        n = self.seen + k
        return n < CHECK_FIRST or n % CHECK_EVERY == 0

    def _words(self, text: str) -> list[int]:
        assert self.splits is not None
        pieces = [text]
        for split in self.splits:
            pieces = [w for piece in pieces for w in split(piece)]
        got = list(map(self.words.get, pieces))
        if None in got:
            for k, word in enumerate(pieces):
                if got[k] is None:
                    if len(self.words) >= WORDS_KEPT:
                        self.words.clear()
                    got[k] = self.words[word] = self.backend.encode(word, add_special_tokens=False).ids
        return list(chain.from_iterable(cast(list[list[int]], got)))


def word_splits(config: dict[str, Any]) -> list | None:
    """The word cutters of a tokenizer configuration (`Tokenizer.to_str()`), None unless the pipeline is one this
    module can follow exactly: no normaliser, a BPE model, and pre-tokenizers among ByteLevel without a prefix space,
    Split on a regular expression (isolated matches) and Digits."""
    model = config.get("model") or {}
    if config.get("normalizer") is not None or model.get("type") != "BPE" or model.get("dropout"):
        return None
    pre = config.get("pre_tokenizer")
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    splits = []
    for step in (s or {} for s in steps):
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space"):
            if step.get("use_regex", True):
                splits.append(regex.compile(GPT2_SPLIT).findall)
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            pattern = step.get("pattern", {})
            source = pattern.get("Regex") if "Regex" in pattern else regex.escape(pattern.get("String", ""))
            if not source:
                return None
            splits.append(_isolated(regex.compile(source)))
        elif kind == "Digits":
            splits.append(_isolated_nonempty(r"\p{N}" if step.get("individual_digits") else r"\p{N}+"))
        else:
            return None
    return splits or None


def _isolated_nonempty(source: str):
    """`_isolated` for a pattern that never matches the empty string and has no groups: one `split` in C."""
    split = regex.compile(f"({source})").split
    return lambda text: [piece for piece in split(text) if piece]


def _isolated(pattern: regex.Pattern):
    """Cut a text into the matches of `pattern` and the text between them (the tokenizers `Isolated` behaviour)."""

    def split(text: str) -> list[str]:
        out, at = [], 0
        for m in pattern.finditer(text):
            if m.start() > at:
                out.append(text[at : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            at = m.end()
        if at < len(text):
            out.append(text[at:])
        return out

    return split
