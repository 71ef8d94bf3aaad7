"""`tunelab data inspect`: exact counts, every reject with its line, duplicates, and no traceback on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli.main import main

CHAT = {
    "messages": [
        {"role": "user", "content": "what is the capital of France"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ]
}


def write_fixture(folder: Path) -> list[Path]:
    chat = folder / "chat.jsonl"
    near = {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "paris is the capital of france"},
        ]
    }
    other = {"messages": [{"role": "user", "content": "name a prime"}, {"role": "assistant", "content": "seven"}]}
    unanswered = {"messages": [{"role": "user", "content": "no answer"}]}
    rows = [json.dumps(CHAT), "{broken", json.dumps(CHAT), json.dumps(near), json.dumps(other), json.dumps(unanswered)]
    chat.write_text("\n".join(rows) + "\n")
    labels = folder / "labels.csv"
    labels.write_text("text,label\ngood film,pos\nbad film,neg\nfine film,pos\nmissing label,\n")
    return [chat, labels]


def test_inspect_json_report_is_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_fixture(tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    code = main(["data", "inspect", *map(str, files), "--model", "none", "--json", "--rejects", str(rejects)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["kept"], report["rejected"]) == (10, 7, 3)
    assert [(f["format"], f["rows"], f["kept"]) for f in report["files"]] == [("chat", 6, 4), ("classification", 4, 3)]
    assert {(r["file"], r["line"]) for r in report["rejects"]} == {
        (str(files[0]), 2),
        (str(files[0]), 6),
        (str(files[1]), 5),
    }
    assert len(rejects.read_text().splitlines()) == 3
    # line 3 repeats line 1; line 4 differs only in case and punctuation (a near duplicate of line 1)
    assert (report["duplicates"]["exact"], report["duplicates"]["near"]) == (1, 1)
    assert report["labels"] == {"pos": 2, "neg": 1}
    assert report["kinds"] == {"chat": 4, "classification": 3}


def test_inspect_prints_rejects_and_survives_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_fixture(tmp_path)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x00\x01\x02\x03")
    code = main(["data", "inspect", *map(str, files), str(binary), str(tmp_path / "missing.jsonl"), "--model", "none"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert f"{files[0]}:2" in out and "malformed JSON" in out and f"{files[1]}:5" in out
    assert "looks binary" in err and "does not exist" in err
