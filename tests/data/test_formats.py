"""Every input format becomes the canonical record, and every way a row can be wrong names its field."""

from __future__ import annotations

import pytest

from tunelab.data.formats import RowError, convert, detect, detect_file

PARTS = [{"type": "text", "text": "a"}, {"type": "text", "text": "2"}]
CHAT = {
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "weight": 0},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": PARTS},
    ]
}


def test_chat_with_weights_and_content_parts() -> None:
    ex = convert(CHAT, "f:1", "chat")
    assert ex.kind == "chat" and [m.role for m in ex.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m.trainable for m in ex.messages if m.role == "assistant"] == [False, True]
    assert ex.messages[-1].content == "a2"


def test_sharegpt_alpaca_prompt_completion() -> None:
    sg = convert(
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "s"},
        "f:1",
        "sharegpt",
    )
    assert [(m.role, m.content) for m in sg.messages] == [("system", "s"), ("user", "q"), ("assistant", "a")]
    al = convert({"instruction": "i", "input": "x", "output": "o", "history": [["h1", "h2"]]}, "f:1", "alpaca")
    assert [(m.role, m.content) for m in al.messages] == [
        ("user", "h1"),
        ("assistant", "h2"),
        ("user", "i\n\nx"),
        ("assistant", "o"),
    ]
    pc = convert({"prompt": [{"role": "user", "content": "p"}], "completion": "c"}, "f:1", "prompt_completion")
    assert [(m.role, m.content) for m in pc.messages] == [("user", "p"), ("assistant", "c")]


def test_preference_both_formats() -> None:
    ex = convert({"prompt": "p", "chosen": "good", "rejected": "bad"}, "f:1", "preference")
    assert (ex.kind, ex.messages[0].content, ex.chosen, ex.rejected) == ("preference", "p", "good", "bad")
    implicit = {
        "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "bad"}],
    }
    assert convert(implicit, "f:1", "preference").messages[0].content == "p"
    oa = {
        "input": {"messages": [{"role": "user", "content": "p"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    ex = convert(oa, "f:1", "openai_preference")
    assert (ex.kind, ex.chosen, ex.rejected) == ("preference", "good", "bad")
    with pytest.raises(RowError, match="same answer"):
        convert({"prompt": "p", "chosen": "x", "rejected": " x"}, "f:1", "preference")


def test_classification_pairs_text() -> None:
    ex = convert({"text": "a", "text_pair": "b", "label": 1}, "f:1", "classification")
    assert (ex.kind, ex.text, ex.text_pair, ex.label) == ("classification", "a", "b", "1")
    assert convert({"text": "a", "label": 2.0}, "f:1", "classification").label == "2"
    ex = convert({"anchor": "a", "positive": "p", "negative": "n"}, "f:1", "pairs")
    assert (ex.kind, ex.anchor, ex.positive, ex.negative) == ("pairs", "a", "p", "n")
    assert convert({"text": "doc"}, "f:1", "text").text == "doc"


@pytest.mark.parametrize(
    ("row", "fmt", "field", "words"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "chat", "messages[0].role", "tool"),
        ({"messages": [{"role": "user", "content": 3}]}, "chat", "messages[0].content", "must be a string"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
            "chat",
            "messages[1].content",
            "empty assistant",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
            "chat",
            "messages",
            "weight 0",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
            "chat",
            "messages[1].weight",
            "0 or 1",
        ),
        ({"messages": "[not json"}, "chat", "messages", "not valid JSON"),
        ({"instruction": "i", "output": ""}, "alpaca", "output", "is empty"),
        ({"text": "a", "label": [1]}, "classification", "label", "string or a number"),
        ({"text": "a", "label": float("nan")}, "classification", "label", "finite number"),
        ({"tokens": ["a", "b"], "tags": ["O"]}, "token_classification", "tags", "1 tags for 2 tokens"),
        ({"text": "a"}, "classification", "label", "looks like text"),
        ({"anchor": "a"}, "pairs", "positive", "missing field 'positive'"),
        (
            {"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []},
            "openai_preference",
            "input.messages",
            "non-empty list",
        ),
    ],
)
def test_bad_rows_name_the_field(row: dict, fmt: str, field: str, words: str) -> None:
    with pytest.raises(RowError, match=words) as info:
        convert(row, "f:1", fmt)
    assert info.value.field == field


def test_detection_order_and_majority() -> None:
    assert detect({"text": "a", "label": "x"}) == "classification"
    assert detect({"prompt": "p", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert detect({"input": {}, "preferred_output": []}) == "openai_preference"
    assert detect({"foo": 1}) is None
    rows = [{"messages": []}, {"instruction": "x"}, {"instruction": "y"}, "junk"]
    assert detect_file(rows) == "alpaca"
