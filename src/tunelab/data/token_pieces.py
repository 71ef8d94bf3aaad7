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

import unicodedata
from dataclasses import dataclass, field

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

    def record(self, keys: list[SeamKey], agreed: bool) -> None:
        """What one row compared both ways said about its seams."""
        for key in keys:
            seen = self.trust.get(key, 0)
            if seen >= 0 and not (agreed and seen >= TRUST_AFTER):
                self.trust[key] = seen + 1 if agreed else -1

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
    stripped = text.lstrip() if start else text.rstrip()
    run = text[: len(text) - len(stripped)] if start else text[len(stripped) :]
    if len(run) > EDGE_SPACES:
        run = "long"
    if not stripped:
        return run + "|"
    c = stripped[0] if start else stripped[-1]
    return run + "|" + (c if c == "'" else unicodedata.category(c))


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
        self._pieces: dict[tuple[Shape, bool], ShapePieces] = {}

    def get(self, shape: Shape, label_all: bool) -> ShapePieces:
        key = (shape, label_all)
        if key not in self._pieces:
            self._pieces[key] = shape_pieces(self.backend, shape, label_all)
        return self._pieces[key]
