"""A corpus of broken and tricky files: inspect and prepare report every row, and never crash."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.cli.main import main
from tunelab.data.config import DataSection
from tunelab.data.pipeline import prepare_dataset
from tunelab.models.load import load_tokenizer

GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})


def write_corpus(folder: Path) -> dict[str, int]:
    """Files and the number of good rows each holds."""
    files: dict[str, tuple[bytes, int]] = {
        "nested.jsonl": (("[" * 50_000 + "\n" + GOOD + "\n").encode(), 1),
        "nested.json": (("[" * 50_000).encode(), 0),
        "numbers.jsonl": (
            "\n".join(
                [
                    '{"messages": [{"role": "user", "content": NaN}, {"role": "assistant", "content": "a"}]}',
                    '{"messages": [{"role": "user", "content": {"x": 1}}, {"role": "assistant", "content": "a"}]}',
                    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null}]}',
                    GOOD[:-3] + ', "weight": 9e999}]}',
                    '{"messages": {"role": "user"}}',
                    "[]",
                    "null",
                    "42",
                    '"text"',
                    GOOD,
                ]
            ).encode(),
            1,
        ),
        "surrogates.jsonl": (
            "\n".join(
                [
                    '{"messages": [{"role": "user", "content": "\\udc80"}, {"role": "assistant", "content": "a"}]}',
                    GOOD[:-1] + ', "task": "\\ud800"}',
                    GOOD,
                ]
            ).encode(),
            1,
        ),
        "header_only.csv": (b"text,label\n", 0),
        "open_quote.csv": (b'text,label\ngood,x\n"never closed,y\nmore,z\n', 2),  # the open row only
        "utf16.csv": ("text,label\nhello,pos\nbye,neg\n".encode("utf-16"), 2),
        "bom_crlf.txt": (b"\xef\xbb\xbfline one\r\n\r\nline \xff two\r\nline three\r\n", 2),
        "empty_list.json": (b"[]", 0),
        "scalar.json": (b"42", 0),
        "blank.jsonl": (b"  \n\n\t\n", 0),
        "zero.jsonl": (b"", 0),
        "mixed.jsonl": (f'{GOOD}\n{{"instruction": "i", "output": "o"}}\n{{"text": "t"}}\n{GOOD}\n'.encode(), 2),
        "huge_row.jsonl": (json.dumps({"prompt": "p" * 1_100_000, "completion": "c"}).encode() + b"\n", 0),
        "cut.jsonl.gz": (gzip.compress(((GOOD + "\n") * 200).encode())[:-30], 0),
        "spaces and ünïcode.jsonl": ((GOOD + "\n").encode(), 1),
    }
    good = {}
    for name, (data, n) in files.items():
        (folder / name).write_bytes(data)
        good[name] = n
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                          [{"role": "user", "content": "q"}]],
                             "blob": [b"\x00", b"\x01"]}), folder / "msgs.parquet")  # fmt: skip
    good["msgs.parquet"] = 1
    return good


def test_inspect_reports_every_file_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_corpus(tmp_path)
    code = main(["data", "inspect", str(tmp_path), "--model", "none", "--json", "--show", "100000"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    files = {Path(f["path"]).name: f for f in report["files"]}
    for name, n in good.items():
        if name == "cut.jsonl.gz":
            assert files[name]["kept"] > 0 and files[name]["rejected"] == 1  # rows before the cut are kept
            continue
        assert files[name]["kept"] == n, (name, files[name])
    assert report["rows"] == report["kept"] + report["rejected"]
    assert all(r["line"] is not None and r["reason"] for r in report["rejects"])
    assert len(report["rejects"]) == report["rejected"]


def test_prepare_accounts_for_the_whole_corpus(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_corpus(tmp_path / "data" if (tmp_path / "data").mkdir() is None else tmp_path)
    cfg = DataSection(train=[str(tmp_path / "data")], max_bad_fraction=1.0, cache_dir=str(tmp_path / "c"),
                      clean={"dedup": "near"})  # fmt: skip
    report = prepare_dataset(cfg, load_tokenizer(str(tiny_model_dir)), 0, tmp_path / "out").report
    a = report["accounting"]
    assert a["rows"] == a["kept"] + a["rejected"] + a["removed"] and a["kept"] > 0
    rejects = (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == a["rejected"]
