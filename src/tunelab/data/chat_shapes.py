"""Chat template rendering once per conversation shape instead of three jinja renders per assistant turn.

Finding which characters carry loss takes, per assistant turn, a render of the conversation before the turn, up to
it and in full (tokenize.loss_spans): about three jinja renders per turn, most of the time of tokenising short chat
rows. Conversations of one shape (the same roles in the same order) differ only in their contents, so a shape is
rendered once with placeholder contents; a row's text is then its contents put between the shape's literal pieces,
and its loss spans are the shape's, moved by the lengths of its contents.

That holds when the template prints each content verbatim and nowhere looks at it. `content_blind` checks the
template's jinja syntax tree for that (content only concatenated into output, or tested for being a string or
defined), and each shape is checked once more with probe contents (quotes, markup, spaces, newlines). A template
that inspects content (trims it, splits reasoning off, tests substrings) is "verified": every row is rendered
once in full and compared with the assembled text, a row that differs taking the three-render path; a shape the
placeholders cannot describe (a content not found, a span edge that depends on a content) always takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import jinja2
from jinja2 import nodes
from transformers import PreTrainedTokenizerBase

from tunelab.core.types import Message
from tunelab.models.chat import render

Mode = Literal["blind", "verified"]
# Private-use code points: no real content or template literal holds them.
OPEN, CLOSE = "\ue000", "\ue001"
PROBE = " probe {k}: 'single' \"double\" <b>&amp;</b> {{x}}\n\ttab  "
ALLOWED_TESTS = {"string", "defined", "undefined", "none"}


@cache
def content_blind(template: str) -> bool:
    """True when `template` uses message contents only by printing them whole (or testing string/defined)."""
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    try:
        tree = env.parse(template)
    except jinja2.TemplateSyntaxError:
        return False
    return _uses_ok(tree, [])


def _is_content(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    return isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content"


def _uses_ok(node: nodes.Node, parents: list[nodes.Node]) -> bool:
    if _is_content(node):
        return _printed_or_tested(parents)
    return all(_uses_ok(child, [*parents, node]) for child in node.iter_child_nodes())


def _printed_or_tested(parents: list[nodes.Node]) -> bool:
    for parent in reversed(parents):
        if isinstance(parent, nodes.Test):
            return parent.name in ALLOWED_TESTS
        if isinstance(parent, nodes.Output):
            return True
        if not isinstance(parent, nodes.Add | nodes.Concat):
            return False
    return False


@dataclass(frozen=True)
class Shape:
    """A rendered conversation shape: literal pieces around the contents, and loss span edges inside them."""

    literals: tuple[str, ...]
    """len(messages) + 1 pieces: the text before content 0, between contents, and after the last."""
    edges: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    """Per loss span: (literal index, offset) of its start and of its end."""

    def assemble(self, contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text for these contents and its loss spans as character ranges."""
        starts, parts, at = [], [], 0
        for k, literal in enumerate(self.literals):
            starts.append(at)
            parts.append(literal)
            at += len(literal)
            if k < len(contents):
                parts.append(contents[k])
                at += len(contents[k])
        spans = [(starts[a] + i, starts[b] + j) for (a, i), (b, j) in self.edges]
        return "".join(parts), spans


class ShapeRenderer:
    """Renders conversations with `tokenizer`'s chat template through cached shapes (see the module docstring)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        template = tokenizer.chat_template
        self.mode: Mode = "blind" if isinstance(template, str) and content_blind(template) else "verified"
        self._shapes: dict[tuple, Shape | None] = {}

    def shape(self, messages: list[Message], turns: list[int]) -> Shape | None:
        """The cached shape of `messages` with loss on the assistant turns `turns`, None when it has none."""
        key = (tuple(m.role for m in messages), tuple(turns))
        if key not in self._shapes:
            self._shapes[key] = self._build(messages, turns)
        return self._shapes[key]

    def _build(self, messages: list[Message], turns: list[int]) -> Shape | None:
        marked = [Message(m.role, f"{OPEN}{k}{CLOSE}") for k, m in enumerate(messages)]
        full = render(self.tokenizer, marked)
        literals = _literals(full, len(marked))
        if literals is None:
            return None
        edges = []
        for k in turns:
            before = render(self.tokenizer, marked[:k], add_generation_prompt=True)
            upto = full if k == len(marked) - 1 else render(self.tokenizer, marked[: k + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                return None
            end = len(upto.rstrip())
            start_edge, end_edge = _edge(full, len(before)), _edge(full, end)
            # The end must follow a literal character (rstrip stopped there), or rstrip would reach into a content.
            if start_edge is None or end_edge is None or end_edge[1] == 0:
                return None
            edges.append((start_edge, end_edge))
        shape = Shape(tuple(literals), tuple(edges))
        probes = [Message(m.role, PROBE.format(k=k)) for k, m in enumerate(messages)]
        if render(self.tokenizer, probes) != shape.assemble([p.content for p in probes])[0]:
            return None
        return shape


def _literals(full: str, n: int) -> list[str] | None:
    """The pieces of `full` between the n placeholders, None unless each appears exactly once and in order."""
    pieces, rest = [], full
    for k in range(n):
        marker = f"{OPEN}{k}{CLOSE}"
        if rest.count(marker) != 1:
            return None
        head, rest = rest.split(marker)
        pieces.append(head)
    if OPEN in rest:
        return None
    return [*pieces, rest]


def _edge(full: str, position: int) -> tuple[int, int] | None:
    """(literal index, offset) of a character position of the placeholder render, None inside a placeholder."""
    literal, at = 0, 0
    while True:
        start = full.find(OPEN, at)
        stop = len(full) if start < 0 else start
        if position <= stop:
            return literal, position - at
        close = full.index(CLOSE, start) + 1
        if position < close:
            return None
        literal, at = literal + 1, close
