from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tunelab.core.types import Message
from tunelab.data.records import Example
from tunelab.data.schedule import epoch_batches
from tunelab.data.tokenize import IGNORE, collate, tokenize_all, tokenize_example
from tunelab.models.load import load_tokenizer

CONV = Example(
    messages=[
        Message("user", "what is color of cat"),
        Message("assistant", "red"),
        Message("user", "and dog"),
        Message("assistant", "blue", trainable=True),
    ],
    origin="x:1",
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def trained_text(tokenizer, example: Example, **kwargs) -> str:
    t = tokenize_example(example, tokenizer, max_length=512, **kwargs)
    return tokenizer.decode([i for i, label in zip(t.input_ids, t.labels, strict=True) if label != IGNORE])


def test_loss_only_on_assistant_turns_including_end_token(tokenizer) -> None:
    assert trained_text(tokenizer, CONV) == "red<|im_end|>blue<|im_end|>"
    assert trained_text(tokenizer, CONV, loss_on="last") == "blue<|im_end|>"
    full = tokenize_example(CONV, tokenizer, max_length=512, loss_on="all")
    assert all(label != IGNORE for label in full.labels)


def test_weight_zero_and_system_prompt(tokenizer) -> None:
    muted = Example(
        messages=[*CONV.messages[:1], Message("assistant", "red", trainable=False), *CONV.messages[2:]], origin="x:2"
    )
    assert trained_text(tokenizer, muted) == "blue<|im_end|>"
    t = tokenize_example(CONV, tokenizer, max_length=512, system_prompt="be brief")
    assert tokenizer.decode(t.input_ids).startswith("<|im_start|>system\nbe brief<|im_end|>")


def test_truncation_that_leaves_no_answer_is_an_error(tokenizer) -> None:
    with pytest.raises(ValueError, match="max_length=8"):
        tokenize_example(CONV, tokenizer, max_length=8)


def test_collate_pads_right_and_masks(tokenizer) -> None:
    a = tokenize_example(CONV, tokenizer, 512)
    b = tokenize_example(Example([Message("user", "hi"), Message("assistant", "yes")], "x:3"), tokenizer, 512)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(a.input_ids))
    assert int(batch["attention_mask"][1].sum()) == len(b.input_ids)
    assert (batch["labels"][1, len(b.input_ids) :] == IGNORE).all()


def test_epoch_batches_deterministic_complete_and_sharded() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 8, 47, 9, 10]  # six short rows, four long
    first = epoch_batches(lengths, 2, seed=1, epoch=0)
    assert first == epoch_batches(lengths, 2, seed=1, epoch=0)
    assert first != epoch_batches(lengths, 2, seed=1, epoch=1)
    assert sorted(i for b in first for i in b) == list(range(10))
    # grouped by length: each batch holds two short or two long rows
    assert all(len({lengths[i] > 20 for i in b}) == 1 for b in first)
    shards = [epoch_batches(lengths, 2, seed=1, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 2
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}


# A turn rendered one way when it is last and another once more follows: a reasoning block only on the last
# assistant turn (as Qwen3's template does), and an end-of-text token only after a finished conversation (Phi-3).
LAST_TURN_DIFFERS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.last %}<think></think>{% endif %}{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% else %}<|endoftext|>{% endif %}"
)
UNSTABLE = (  # an earlier turn's content itself changes once more follows: nothing to locate it by
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if loop.last %}{{ m.content }}{% else %}"
    "{{ m.content | upper }}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


def test_a_turn_rendered_differently_when_last_is_located_by_its_content(tokenizer) -> None:
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = LAST_TURN_DIFFERS
    assert trained_text(templated, CONV) == "red<|im_end|><think></think>blue<|im_end|>\n<|endoftext|>"
    assert trained_text(templated, CONV, loss_on="last") == "<think></think>blue<|im_end|>\n<|endoftext|>"


def test_a_template_whose_earlier_turns_change_rejects_the_row(tokenizer) -> None:
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = UNSTABLE
    items, rejects = tokenize_all([CONV], templated, 512)
    assert not items and len(rejects) == 1 and "not prefix-stable" in rejects[0].reason
