"""The batched chat path (one render per shape, one fast-tokenizer batch) gives the slow path's ids and labels.

The reference is the tokenizer's own `apply_chat_template(..., tokenize=True)` for the ids and the three-render
`tokenize_example` for the labels, on varied rows: system prompts, several turns, untrained turns, contents with
template-like text, markup, quotes, unicode, surrounding spaces and newlines, and templates that trim or inspect
contents (which must not take the shortcut wrongly).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunelab.core.types import Message
from tunelab.data.chat_shapes import ShapeRenderer, content_blind
from tunelab.data.records import Example
from tunelab.data.tokenize import tokenize_example, tokenize_records
from tunelab.models.load import CHATML_TEMPLATE

PIECES = ["cat", "  lead", "trail  ", "{{ x }}", "<b>&amp;</b>", "'q' \"d\"", "东京", "🦙", "\n\nnl\n", "\t", "123 45"]
TRIMMING = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Drops everything up to a </think> from assistant contents, as reasoning models' templates do.
INSPECTING = (
    "{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and '</think>' in c %}"
    "{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _rows(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = rng.choice([1, 1, 2, 3])
        messages = [Message("system", "Be brief. " + rng.choice(PIECES))] if rng.random() < 0.3 else []
        for _ in range(turns):
            messages.append(Message("user", " ".join(rng.choices(PIECES, k=rng.randint(1, 6)))))
            answer = " ".join(rng.choices(PIECES, k=rng.randint(1, 6)))
            if rng.random() < 0.2:
                answer = "thinking</think>" + answer
            messages.append(Message("assistant", answer, trainable=rng.random() < 0.8))
        rows.append(Example(kind="chat", messages=messages, origin=f"rows.jsonl:{i}"))
    return rows


@pytest.fixture(params=["model", "trimming", "inspecting"])
def tokenizer(request: pytest.FixtureRequest, tiny_model_dir: Path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = {"model": CHATML_TEMPLATE, "trimming": TRIMMING, "inspecting": INSPECTING}[request.param]
    return tok


@pytest.mark.parametrize("loss_on", ["assistant", "last", "all"])
def test_batched_ids_and_labels_equal_the_slow_way(tokenizer, loss_on: str) -> None:
    rows = [r for r in _rows(150) if loss_on != "assistant" or any(m.trainable for m in r.messages[1::2])]
    fast = tokenize_records(rows, tokenizer, 4096, loss_on)  # type: ignore[arg-type]
    for row, got in zip(rows, fast, strict=True):
        chat = [{"role": m.role, "content": m.content} for m in row.messages]
        want_ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
        try:
            slow = tokenize_example(row, tokenizer, 4096, loss_on)  # type: ignore[arg-type]
        except ValueError as exc:
            assert isinstance(got, ValueError) and str(got) == str(exc)
            continue
        assert not isinstance(got, ValueError), got
        assert got[0].input_ids == slow.input_ids == list(want_ids), row.origin
        assert got[0].labels == slow.labels, row.origin


def test_which_templates_take_the_shortcut(tokenizer) -> None:
    # Only a template that prints contents verbatim is rendered once per shape without checking each row.
    blind = content_blind(tokenizer.chat_template)
    assert blind == (tokenizer.chat_template == CHATML_TEMPLATE)
    assert ShapeRenderer(tokenizer).mode == ("blind" if blind else "verified")


def test_system_prompt_truncation_and_rejects_match(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _rows(40, seed=1)
    for truncation in ("right", "left", "reject"):
        fast = tokenize_records(rows, tok, 24, "assistant", "You are terse.", truncation)  # type: ignore[arg-type]
        for row, got in zip(rows, fast, strict=True):
            try:
                slow = tokenize_example(row, tok, 24, "assistant", "You are terse.", truncation)  # type: ignore[arg-type]
            except ValueError as exc:
                assert isinstance(got, ValueError) and str(got) == str(exc)
                continue
            assert not isinstance(got, ValueError)
            assert (got[0].input_ids, got[0].labels, got[0].truncated) == (slow.input_ids, slow.labels, slow.truncated)


def test_an_earlier_padded_truncated_call_changes_nothing(tiny_model_dir: Path) -> None:
    # A fast tokenizer's backend keeps the padding and truncation of its last call (an evaluation batch padded to
    # the longest row, say): the batched path must not pad or cut its rows to what that call left behind.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _rows(30, seed=2)
    clean = tokenize_records(rows, tok, 4096)
    tok(["a", "a much longer text than the first one " * 8], padding="max_length", truncation=True, max_length=7)
    after = tokenize_records(rows, tok, 4096)
    assert sum(not isinstance(r, ValueError) for r in clean) >= 20
    for want, got in zip(clean, after, strict=True):
        if isinstance(want, ValueError):  # a row without a trained answer is rejected both times
            assert isinstance(got, ValueError) and str(got) == str(want)
            continue
        assert not isinstance(got, ValueError), got
        assert (got[0].input_ids, got[0].labels) == (want[0].input_ids, want[0].labels)
