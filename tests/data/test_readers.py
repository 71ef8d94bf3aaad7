"""Every file type: each row is kept or rejected with its line, counts are exact, and broken files are clear."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.core.errors import DataError
from tunelab.data.load import LoadOptions, load_examples

CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def lines_of(result) -> dict[int, str]:
    return {int(r.origin.rsplit(":", 1)[1]): r.reason for r in result.rejects}


def test_json_list_with_a_broken_element_resumes_at_the_next(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        '[\n  {"instruction": "a",\n   "output": "b"},\n  {"instruction": "c", output: "d"},\n'
        '  {"instruction": "e", "output": 5},\n  {"instruction": "g", "output": "h"},\n]\n'
    )
    result = load_examples([path])
    assert [e.origin for e in result.examples] == [f"{path}:2", f"{path}:6"]
    assert set(lines_of(result)) == {4, 5} and "malformed JSON" in lines_of(result)[4]
    assert result.files[str(path)].rows == 4 and result.formats[str(path)] == "alpaca"


def test_json_wrapper_object_single_object_and_jsonl_named_json(tmp_path: Path) -> None:
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"version": 1, "data": [CHAT, CHAT]}, indent=2))
    assert len(load_examples([wrapped]).examples) == 2
    single = tmp_path / "s.json"
    single.write_text(json.dumps(CHAT))
    assert len(load_examples([single]).examples) == 1
    lines = tmp_path / "l.json"
    lines.write_text(json.dumps(CHAT) + "\n{oops\n" + json.dumps(CHAT) + "\n")
    result = load_examples([lines])
    assert len(result.examples) == 2 and set(lines_of(result)) == {2}


def test_csv_multiline_cells_wrong_field_counts_and_json_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(
        b'\xef\xbb\xbftext,label\r\nhello,pos\r\n"two\r\nlines",neg\r\ntoo,many,fields\r\n,neg\r\n\r\nok,\xff\r\nlast,pos\r\n'
    )
    result = load_examples([path])
    assert [e.origin for e in result.examples] == [f"{path}:2", f"{path}:3", f"{path}:9"]
    assert result.examples[1].text == "two\r\nlines" and result.examples[1].label == "neg"
    bad = lines_of(result)
    assert set(bad) == {5, 6, 8}
    assert "3 fields" in bad[5] and "'text'" in bad[6] and "UTF-8" in bad[8]
    chat = tmp_path / "c.tsv"
    chat.write_text("messages\tnote\n" + json.dumps(CHAT["messages"]) + "\tx\n")
    assert load_examples([chat]).examples[0].messages[1].content == "a"


def test_parquet_rows_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2", None], "completion": ["c1", "", "c3"]}), path)
    result = load_examples([path])
    assert [e.origin for e in result.examples] == [f"{path}:1"]
    assert set(lines_of(result)) == {2, 3}
    broken = tmp_path / "b.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot be read"):
        load_examples([broken])


def test_text_files_by_line_paragraph_document(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes(b"one\ntwo\n\nthree\n\xff bad\n")
    by_line = load_examples([path])
    assert [e.text for e in by_line.examples] == ["one", "two", "three"] and set(lines_of(by_line)) == {5}
    paragraphs = load_examples([path], options=LoadOptions(text_unit="paragraph"))
    assert [e.text for e in paragraphs.examples] == ["one\ntwo"] and set(lines_of(paragraphs)) == {4}
    whole = tmp_path / "w.txt"
    whole.write_text("a\n\nb\n")
    assert [e.text for e in load_examples([whole], options=LoadOptions(text_unit="document")).examples] == ["a\n\nb"]


def test_encodings_gzip_empty_and_unicode_line_separators(tmp_path: Path) -> None:
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes((json.dumps(CHAT) + "\n").encode("utf-16"))
    assert len(load_examples([utf16]).examples) == 1
    gz = tmp_path / "g.jsonl.gz"
    gz.write_bytes(gzip.compress((json.dumps(CHAT) + "\n").encode()))
    assert len(load_examples([gz]).examples) == 1
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n  \n")
    result = load_examples([empty])
    assert result.rows == 0 and result.formats[str(empty)] == "empty"
    sep = tmp_path / "s.jsonl"  # U+2028 inside a JSON string is not a line break
    sep.write_text(json.dumps({"prompt": "a\u2028b", "completion": "c"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_examples([sep]).examples[0].messages[0].content == "a\u2028b"
    surrogate = tmp_path / "x.jsonl"
    surrogate.write_text('{"prompt": "\\ud800", "completion": "c"}\n')
    assert "not valid UTF-8" in load_examples([surrogate]).rejects[0].reason


def test_long_rows_rejected_or_truncated_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p" * 50, "completion": "c"}) + "\n" + '{"prompt": "q", "completion": "a"}\n')
    rejected = load_examples([path], options=LoadOptions(max_row_chars=20))
    assert len(rejected.examples) == 1 and "max_row_chars=20" in rejected.rejects[0].reason
    cut = load_examples([path], options=LoadOptions(max_row_chars=20, long_rows="truncate"))
    assert cut.files[str(path)].truncated == 1 and cut.examples[0].messages[0].content == "p" * 20


def test_folders_globs_and_task_tags(tmp_path: Path) -> None:
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(json.dumps(CHAT) + "\n" + json.dumps({**CHAT, "task": "math"}) + "\n")
    (tmp_path / "notes.bin").write_bytes(b"\x00")
    assert load_examples([tmp_path]).rows == 4
    result = load_examples([str(tmp_path / "*.jsonl")])
    assert [e.task for e in result.examples] == ["a", "math", "b", "math"]
    with pytest.raises(DataError, match="matches no file"):
        load_examples([str(tmp_path / "*.csv")])


def test_per_file_format_override(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "hello", "label": "x"}\n')
    b.write_text('{"text": "hello", "label": "x"}\n')
    result = load_examples([a, b], options=LoadOptions(formats={"a": "text"}))
    assert [e.kind for e in result.examples] == ["text", "classification"]


def test_csv_unterminated_quote_rejects_its_own_line_only(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nfine,yes\n"hello, world\na,b\nc,d\n"two\nlines",ok\n')
    result = load_examples([path])
    assert [e.origin for e in result.examples] == [f"{path}:{n}" for n in (2, 4, 5, 6)]
    assert result.examples[3].messages[0].content == "two\nlines"
    bad = lines_of(result)
    assert set(bad) == {3} and "closing quote" in bad[3]
    assert result.files[str(path)].rows == 5 and result.files[str(path)].rejected == 1
    eof = tmp_path / "e.csv"  # the quote runs to the end of the file
    eof.write_text('prompt,completion\n"open,x\nb,c\n')
    result = load_examples([eof])
    assert [e.origin for e in result.examples] == [f"{eof}:3"] and set(lines_of(result)) == {2}


def test_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,prompt\na,b,c\n")
    with pytest.raises(DataError, match=r"columns 1 and 3 of the header are both named 'prompt'"):
        load_examples([path])


def test_json_list_cut_off_before_its_end_is_a_reject(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    row = json.dumps({"instruction": "a", "output": "b"})
    path.write_text(f"[\n  {row},\n  {row},\n")
    result = load_examples([path])
    assert len(result.examples) == 2 and result.files[str(path)].rejected == 1
    assert "never closed" in result.rejects[0].reason and "cut off" in result.rejects[0].reason
