"""Broken and tricky files through the real commands (`tunelab data inspect`, `tunelab train`) as subprocesses:
every bad row is reported with its file, line and reason, every good row is kept, counts are exact, exit codes
are right, and no traceback is ever printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.cli.main import main
from tunelab.data.store import PreparedDataset


def chat(q: str, a: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})


def user_only(q: str, **assistant: object) -> str:
    turns = [{"role": "user", "content": q}] + ([{"role": "assistant", **assistant}] if assistant else [])
    return json.dumps({"messages": turns})


def sharegpt(*turns: tuple[str, str]) -> str:
    return json.dumps({"conversations": [{"from": f, "value": v} for f, v in turns]})


# file -> (bad line -> reason fragment, good rows). Lines are 1-based; Parquet counts rows.
CHAT_FILES: dict[str, tuple[dict[int, str], int]] = {
    "bom.jsonl": ({}, 2),
    "crlf.jsonl": ({2: "malformed JSON"}, 2),
    "bad_utf8.jsonl": ({2: "not valid UTF-8"}, 2),
    "array.json": ({1: "field 'output' must be a string"}, 2),  # one-line list: the element is named
    "quoted.csv": ({5: "missing field 'prompt'"}, 2),  # the rows before it span lines 2-3 and 4
    "wrongtypes.parquet": ({1: "'prompt' must be a string", 2: "'prompt' must be a string"}, 0),
    "sharegpt.jsonl": ({2: "conversations[1].from is 'robot'"}, 1),
    "no_assistant.jsonl": ({1: "no assistant turn", 2: "weight 0"}, 1),
    "long.jsonl": ({1: "more than data.max_row_chars=10,000"}, 1),
    "context.jsonl": ({}, 2),  # fine as text; longer than the model context once tokenized (see train)
    "empty.jsonl": ({}, 0),
}


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bom.jsonl").write_bytes(
        b"\xef\xbb\xbf" + f"{chat('bom q1', 'bom a1')}\n{chat('bom q2', 'a2')}\n".encode()
    )
    (folder / "crlf.jsonl").write_bytes(
        f'{chat("crlf q1", "a1")}\r\n{{"messages": [\r\n{chat("crlf q3", "a3")}\r\n'.encode()
    )
    bad = chat("utf q2", "bXd").encode().replace(b"bXd", b"b\xffd")
    (folder / "bad_utf8.jsonl").write_bytes(
        chat("utf q1", "a1").encode() + b"\n" + bad + b"\n" + chat("utf q3", "a3").encode()
    )
    rows = [
        {"instruction": "arr i1", "output": "arr o1"},
        {"instruction": "arr i2", "output": 5},
        {"instruction": "arr i3", "input": "x", "output": "arr o3"},
    ]
    (folder / "array.json").write_text(json.dumps(rows))
    (folder / "quoted.csv").write_text('prompt,completion\n"line one\nline two",first\n"say ""hi""",second\n,orphan\n')
    pq.write_table(pa.table({"prompt": [1, 2], "completion": ["p one", "p two"]}), folder / "wrongtypes.parquet")
    (folder / "sharegpt.jsonl").write_text(
        sharegpt(("human", "sg q1"), ("gpt", "sg a1")) + "\n" + sharegpt(("human", "sg q2"), ("robot", "a")) + "\n"
    )
    (folder / "no_assistant.jsonl").write_text("\n".join([
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "na q1"}]}),
        user_only("na q2", content="a", weight=0),
        chat("na q3", "na a3"),
    ]) + "\n")  # fmt: skip
    (folder / "long.jsonl").write_text(chat("long q1", "x " * 15_000) + "\n" + chat("long q2", "a2") + "\n")
    words = " ".join(f"w{i}" for i in range(600))
    (folder / "context.jsonl").write_text(chat(words, "ctx a1") + "\n" + chat("ctx q2", "ctx a2") + "\n")
    (folder / "empty.jsonl").write_bytes(b"")


def write_extras(folder: Path) -> None:
    """Files that cannot go into a language-model run: OpenAI preference rows, and a binary file."""
    pref = {
        "input": {"messages": [{"role": "user", "content": "pref q1"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    missing = {k: v for k, v in pref.items() if k != "non_preferred_output"}
    (folder / "pref.jsonl").write_text(json.dumps(pref) + "\n" + json.dumps(missing) + "\n")
    (folder / "blob.jsonl").write_bytes(bytes(range(256)) * 8)


def tunelab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env_cmd = [sys.executable, "-m", "tunelab.cli", *args]
    done = subprocess.run(env_cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    return done


def expected_rejects() -> set[tuple[str, int]]:
    return {(name, line) for name, (bad, _) in CHAT_FILES.items() for line in bad}


def check_rejects(rejects: list[dict], extra: dict[tuple[str, int], str]) -> None:
    wanted = {(n, line): why for n, (bad, _) in CHAT_FILES.items() for line, why in bad.items()} | extra
    got = {(Path(r["file"]).name, r["line"]): r["reason"] for r in rejects}
    assert len(rejects) == len(got) == len(wanted), sorted(got)
    for key, why in wanted.items():
        assert why in got[key], (key, got[key])


def test_inspect_command_on_the_corpus(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_corpus(data)
    write_extras(data)
    done = tunelab("data", "inspect", str(data), "--model", "none", "--max-row-chars", "10000", "--json",
                   "--rejects", str(tmp_path / "rejects.jsonl"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2  # a binary file is a file problem: reported, and the exit code says so
    assert "blob.jsonl" in done.stderr and "binary" in done.stderr and len(done.stderr.strip().splitlines()) <= 3
    report = json.loads(done.stdout)
    files = {Path(f["path"]).name: f for f in report["files"]}
    for name, (bad, good) in CHAT_FILES.items():
        assert (files[name]["kept"], files[name]["rejected"]) == (good, len(bad)), (name, files[name])
    assert files["pref.jsonl"]["format"] == "openai_preference" and files["pref.jsonl"]["kept"] == 1
    assert files["blob.jsonl"]["problem"]
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    check_rejects(rejects, {("pref.jsonl", 2): "missing field 'non_preferred_output'"})
    array = next(r for r in rejects if r["file"].endswith("array.json"))
    assert "element 2 of the JSON list" in array["reason"] and array["field"] == "output"
    good = sum(g for _, g in CHAT_FILES.values()) + 1
    assert (report["kept"], report["rejected"]) == (good, len(rejects)) == (16, 11)
    assert report["rows"] == report["kept"] + report["rejected"]

    text = tunelab("data", "inspect", str(data / "sharegpt.jsonl"), "--model", "none", cwd=tmp_path)
    assert text.returncode == 0 and "sharegpt.jsonl:2  [conversations[1].from]" in text.stdout


def train_config(tmp_path: Path, model_dir: Path, data: str, *extra: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("\n".join([
        f"model: {{source: {model_dir}}}",
        "data:",
        f"  train: [{data}]",
        "  val_fraction: 0.0",
        "  max_row_chars: 10000",
        "  max_length: 128",
        "  truncation: reject",
        f"  cache_dir: {tmp_path / 'cache'}",
        *extra,
        "training: {max_steps: 1, batch_size: 2, precision: fp32}",
        "eval: {baseline: false, generate: false}",
        f"output: {{dir: {tmp_path / 'runs'}, name: robust}}",
    ]) + "\n")  # fmt: skip
    return cfg


def test_train_command_on_the_corpus(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_corpus(tmp_path / "data")
    cfg = train_config(tmp_path, tiny_model_dir, "data")

    strict = tunelab("train", str(cfg), cwd=tmp_path)  # default max_bad_fraction 0.05: 11 of 25 is too many
    assert strict.returncode == 2 and "max_bad_fraction" in strict.stderr, strict.stderr[-2000:]

    lenient = ["--set", "data.max_bad_fraction=0.5"]
    assert main(["data", "prepare", str(cfg), "--out", str(tmp_path / "prepared"), *lenient]) == 0
    done = tunelab("train", str(cfg), *lenient, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "robust"
    report = json.loads((run / "data_report.json").read_text())
    assert report["cached"]  # training reuses what `tunelab data prepare` built
    prepared = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert prepared["accounting"] == report["accounting"] and prepared["fingerprint"] == report["fingerprint"]
    good = sum(g for _, g in CHAT_FILES.values()) - 1  # context.jsonl:1 is too long for max_length 128
    assert report["accounting"] == {"rows": 25, "kept": good, "rejected": 11, "removed": 0}
    rejects = [json.loads(x) for x in (run / "rejects.jsonl").read_text().splitlines()]
    check_rejects(rejects, {("context.jsonl", 1): "128"})
    assert report["over_context"] == {"policy": "reject", "max_length": 128, "truncated": 0, "rejected": 1}
    assert report["long_rows"] == {"policy": "reject", "max_row_chars": 10_000, "truncated": 0}
    assert next(r for r in rejects if r["file"].endswith("context.jsonl"))["stage"] == "tokenize"

    records = PreparedDataset(Path(report["dataset"]), report).table("train_records").to_pylist()
    origins = {(Path(o.rsplit(":", 1)[0]).name, int(o.rsplit(":", 1)[1])) for o in (r["origin"] for r in records)}
    assert len(records) == good and len(origins) == good - 1  # the two kept rows of array.json share line 1
    assert not origins & (expected_rejects() - {("array.json", 1)})
    contents = [m["content"] for r in records for m in r["messages"]]
    assert "arr i1" in contents and "arr i3\n\nx" in contents and "arr i2" not in contents
    assert "line one\nline two" in contents and 'say "hi"' in contents  # quoted CSV newline and quotes kept
    assert "bom q1" in contents and not any(c.startswith("\ufeff") for c in contents)
    assert json.loads((run / "eval.json").read_text())["steps"] == 1


@pytest.mark.parametrize("name", ["blob.jsonl", "pref.jsonl"])
def test_train_refuses_unusable_files_in_one_paragraph(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    write_extras(tmp_path)
    cfg = train_config(tmp_path, tiny_model_dir, name, "  max_bad_fraction: 0.6")
    assert main(["train", str(cfg)]) == 2
    out, err = capsys.readouterr()
    message = err.strip()
    assert "Traceback" not in out + err
    assert message.startswith("error:") and "\n\n" not in message
    assert ("binary" in message) if name == "blob.jsonl" else ("preference" in message and "sft" in message)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.jsonl"], "missing.jsonl"),
        (["{data}/bom.jsonl", "--format", "chatml"], "--format 'chatml' is not a format"),
        (["{data}/bom.jsonl", "--near-threshold", "1.5"], "--near-threshold"),
        (["{data}/empty.jsonl", "{data}/wrongtypes.parquet"], None),
    ],
)
def test_inspect_error_paths_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str | None
) -> None:
    write_corpus(tmp_path / "d")
    code = main(["data", "inspect", *(a.format(data=tmp_path / "d") for a in args), "--model", "none"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if says is None:  # nothing readable is kept, but every row is accounted for: not an error
        assert code == 0 and "rows 2: kept 0, rejected 2" in out
    else:
        assert code == 2 and says in err and err.startswith("error:"), err


def test_inspect_lists_rows_longer_than_the_context(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_corpus(tmp_path)
    args = ["data", "inspect", str(tmp_path / "context.jsonl"), "--model", str(tiny_model_dir), "--max-length", "128"]
    assert main([*args, "--json"]) == 0
    over = json.loads(capsys.readouterr().out)["lengths"]["over_max_length"]
    assert over["count"] == 1 and over["rows"][0]["origin"].endswith("context.jsonl:1")
    assert over["rows"][0]["tokens"] > 600  # 600 words before the answer
    assert main(args) == 0
    assert "1 rows longer than 128 tokens" in capsys.readouterr().out
