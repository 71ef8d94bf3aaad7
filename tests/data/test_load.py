from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.core.errors import DataError
from tunelab.data.load import check_bad_fraction, load_examples

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_every_row_is_kept_or_rejected_with_line_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        "",
        json.dumps({"instruction": "Add", "input": "2 and 3", "output": "5"}),
        json.dumps({"instruction": "Add", "output": 5}),
        json.dumps([1, 2]),
        json.dumps({"foo": 1}),
    ]
    path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())  # BOM and CRLF
    result = load_examples([path])
    assert len(result.examples) == 1 and len(result.rejects) == 7 and result.rows == 8
    by_line = {r.origin.rsplit(":", 1)[1]: r.reason for r in result.rejects}
    assert set(by_line) == {"2", "3", "4", "6", "7", "8", "9"}
    assert "malformed JSON" in by_line["2"]
    assert "'robot'" in by_line["3"]
    assert "no assistant turn" in by_line["4"]
    # The format is detected per file from its first good row: an Alpaca row in a chat file is a bad chat row.
    assert "'messages'" in by_line["6"]


def test_alpaca_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    rows = [{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Add", "output": 5}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result = load_examples([path])
    assert result.formats[str(path)] == "alpaca"
    assert result.examples[0].messages[0].content == "Add\n\n2 and 3"
    assert "'output' must be a string" in result.rejects[0].reason and result.rejects[0].origin.endswith(":2")


def test_invalid_utf8_line_is_rejected_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff\xfe", "completion": "x"}\n')
    result = load_examples([path])
    assert len(result.examples) == 1 and "UTF-8" in result.rejects[0].reason


def test_missing_and_binary_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_examples([tmp_path / "nope.jsonl"])
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(DataError, match="binary"):
        load_examples([binary])


def test_too_many_bad_rows_abort_with_first_problems(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{bad\n{bad\n")
    result = load_examples([path])
    with pytest.raises(DataError, match=r"2 of 3 rows were rejected.*d.jsonl:2: malformed JSON"):
        check_bad_fraction(result, 0.05, tmp_path / "rejects.jsonl")
    check_bad_fraction(result, 0.9, None)  # within the limit: no error


def test_weight_zero_turns_are_not_trained(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (example,) = load_examples([path]).examples
    assert [m.trainable for m in example.messages if m.role == "assistant"] == [False, True]
