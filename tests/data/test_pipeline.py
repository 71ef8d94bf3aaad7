"""The whole pipeline on a hand-built fixture: every row accounted for, exact report counts, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.core.errors import DataError
from tunelab.data.config import DataSection
from tunelab.data.pipeline import prepare_chat_data, prepare_dataset
from tunelab.models.load import load_tokenizer


def chat(q: str, a: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})


A = ("what is the color of the sky on a clear day", "the sky is blue on a clear day")
B = ("how many legs does a dog have when it is healthy", "a healthy dog has four legs")
V1 = ("name the largest planet in our solar system", "jupiter is the largest planet")


def write_fixture(tmp: Path) -> tuple[Path, Path]:
    train, val = tmp / "train.jsonl", tmp / "val.jsonl"
    train.write_text("\n".join([
        chat(*A),                                                   # 1 kept
        chat(*A),                                                   # 2 exact duplicate of 1
        chat(A[0].upper() + "?", A[1].capitalize() + "."),          # 3 near duplicate of 1
        chat(*B),                                                   # 4 near duplicate of validation 2: contamination
        "{broken json",                                             # 5 rejected at load
        chat("a question", "\u200b"),                               # 6 answer empty after normalisation
        chat("word " * 300, "a long answer"),                       # 7 longer than max_length: rejected
        chat("what do cats like to eat", "cats like to eat fish"),  # 8 kept
        chat(*V1),                                                  # 9 exact duplicate of validation 1
    ]) + "\n")  # fmt: skip
    val.write_text("\n".join([chat(*V1), chat(B[0].upper(), B[1] + "!"), chat("unique question", "unique")]) + "\n")
    return train, val


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def config(train: Path, val: Path, tmp: Path, **extra) -> DataSection:
    return DataSection(train=[str(train)], validation=[str(val)], max_length=256, truncation="reject",
                       max_bad_fraction=0.5, cache_dir=str(tmp / "cache"), contamination="remove",
                       clean={"dedup": "near"}, **extra)  # fmt: skip


def test_every_row_is_accounted_for(tmp_path: Path, tokenizer) -> None:
    train, val = write_fixture(tmp_path)
    r = prepare_dataset(config(train, val, tmp_path), tokenizer, 0, tmp_path / "out").report
    assert r["accounting"] == {"rows": 12, "kept": 5, "rejected": 2, "removed": 5}
    assert (r["train_records"], r["val_records"], r["rejected_at_load"], r["rejected_at_tokenize"]) == (2, 3, 1, 1)
    assert r["removed"] == {"contamination": 2, "normalize": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert r["contamination"] == {"action": "remove", "validation_rows": 2, "exact": 1, "near": 1, "train_rows": 2,
                                  "removed": 2}  # fmt: skip
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(x["file"], x["line"], x["stage"]) for x in rejects] == [
        (str(train), 5, "load"),
        (str(train), 7, "tokenize"),
    ]
    removed = [json.loads(x) for x in (tmp_path / "out" / "removed.jsonl").read_text().splitlines()]
    assert sorted((x["line"], x["filter"]) for x in removed) == [
        (2, "exact_duplicate"),
        (3, "near_duplicate"),
        (4, "contamination"),
        (6, "normalize"),
        (9, "contamination"),
    ]
    assert f"{train}:1" in next(x["reason"] for x in removed if x["line"] == 2)
    assert {"report.json", "report.md"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_cache_is_reused_and_invalidated(tmp_path: Path, tokenizer) -> None:
    train, val = write_fixture(tmp_path)
    cfg = config(train, val, tmp_path)
    first = prepare_dataset(cfg, tokenizer, 0, tmp_path / "a").report
    again = prepare_dataset(cfg, tokenizer, 0, tmp_path / "b").report
    assert not first["cached"] and again["cached"] and again["fingerprint"] == first["fingerprint"]
    assert (tmp_path / "b" / "rejects.jsonl").read_text() == (tmp_path / "a" / "rejects.jsonl").read_text()
    other_seed = prepare_dataset(cfg, tokenizer, 1, tmp_path / "c").report
    assert not other_seed["cached"]
    with train.open("a") as fh:
        fh.write(chat("one more", "row") + "\n")
    assert not prepare_dataset(cfg, tokenizer, 0, tmp_path / "d").report["cached"]


def test_parallel_run_gives_the_same_result(tmp_path: Path, tokenizer) -> None:
    train, val = write_fixture(tmp_path)
    one = prepare_dataset(config(train, val, tmp_path, cache=False), tokenizer, 0, tmp_path / "a").report
    two = prepare_dataset(config(train, val, tmp_path, cache=False, num_proc=2), tokenizer, 0, tmp_path / "b").report
    drop = {"dataset", "rejects_file", "removed_file", "cached", "seconds"}
    assert {k: v for k, v in one.items() if k not in drop} == {k: v for k, v in two.items() if k not in drop}


def test_chat_data_for_training_and_split(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(chat(f"question {i}", f"answer {i}") for i in range(20)) + "\n")
    cfg = DataSection(train=[str(path)], val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    data = prepare_chat_data(cfg, tokenizer, 0, tmp_path / "run")
    assert (len(data.train), len(data.val), len(data.val_examples)) == (15, 5, 5)
    assert {t.origin for t in data.val} == {e.origin for e in data.val_examples}
    assert all(t.target_tokens > 0 for t in data.train)
    assert data.report["rows"] == 20 and data.report["train_examples"] == 15


def test_too_many_rejects_and_wrong_kind_abort_clearly(tmp_path: Path, tokenizer) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat("q", "a") + "\n{x\n{y\n")
    with pytest.raises(DataError, match="2 of 3 rows were rejected"):
        prepare_chat_data(DataSection(train=[str(bad)], cache_dir=str(tmp_path / "c")), tokenizer, 0, tmp_path / "r")
    labels = tmp_path / "labels.csv"
    labels.write_text("text,label\na,x\nb,y\nc,x\n")
    with pytest.raises(DataError, match="3 classification records"):
        prepare_chat_data(DataSection(train=[str(labels)], cache_dir=str(tmp_path / "c")), tokenizer, 0, tmp_path / "r")


def test_training_run_uses_the_pipeline_and_its_cache(tmp_path: Path, tiny_model_dir: Path, tokenizer) -> None:
    from tunelab.config import load_config
    from tunelab.recipes.run import run_training

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(chat(f"question {i}", f"answer {i}") for i in range(12)) + "\n{bad\n")
    cfg = load_config(None, [
        f"data.train={data}", f"model.source={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}", "output.name=a",
        "training.epochs=1", "training.batch_size=4", "training.precision=fp32", "eval.generate=false",
        "eval.baseline=false", "data.max_bad_fraction=0.2", "data.clean.dedup=exact",
    ])  # fmt: skip
    run = run_training(cfg)
    report = json.loads((run.run_dir / "data_report.json").read_text())
    assert not report["cached"] and report["train_examples"] == 11 and report["rejected"] == 1
    assert "malformed JSON" in (run.run_dir / "rejects.jsonl").read_text()
    assert (run.run_dir / "data_report.md").is_file() and not (run.run_dir / "report.json").exists()
    again = prepare_chat_data(cfg.data, tokenizer, cfg.training.seed, tmp_path / "again", batch_size=4)
    assert again.report["cached"] and again.report["fingerprint"] == report["fingerprint"]


def test_packing_and_schedule_reach_the_training_data(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(chat(f"q {i}", f"a {i}") for i in range(10)) + "\n")
    packed = prepare_chat_data(DataSection(train=[str(path)], val_fraction=0.2, packing=True, max_length=256,
                                           cache_dir=str(tmp_path / "c")), tokenizer, 0, tmp_path / "r")  # fmt: skip
    assert len(packed.train) < 8 and sum(len(t.seq_lens) for t in packed.train) == 8
    curriculum = DataSection(train=[str(path)], cache_dir=str(tmp_path / "c"), schedule={"order": "curriculum"})
    data = prepare_chat_data(curriculum, tokenizer, 0, tmp_path / "r2")
    assert data.schedule.order == "curriculum" and len(data.schedule.difficulty) == len(data.train)


def test_prepare_command_writes_dataset_reports_and_plots(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunelab.cli.main import main

    labels = tmp_path / "train.jsonl"
    labels.write_text("\n".join(chat(f"q {i}", f"a {i % 3}") for i in range(9)) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{source: {tiny_model_dir}}}\ndata:\n  train: train.jsonl\n  cache_dir: {tmp_path / 'c'}\n")
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(cfg), "--out", str(out)]) == 0
    assert "9 rows" in capsys.readouterr().out
    for name in ("report.json", "report.md", "lengths.png", "rejects.jsonl", "removed.jsonl", "dataset/train"):
        assert (out / name).exists(), name
    assert main(["data", "prepare", str(cfg), "--out", str(out), "--set", "data.clean.dedupe=exact"]) == 2
    assert "Did you mean 'dedup'" in capsys.readouterr().err


def test_every_data_config_field_has_help_text() -> None:
    from tunelab.data.config import AugmentSection, CleanSection, ScheduleSection

    for section in (DataSection, CleanSection, ScheduleSection, AugmentSection):
        missing = [name for name, f in section.model_fields.items() if not f.description]
        assert not missing, (section.__name__, missing)
    with pytest.raises(ValueError, match="packing"):
        DataSection(train=["x"], packing=True, schedule={"order": "curriculum"})


def test_prepare_plots_labels_and_resolves_cache_dir_against_the_config(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.cli.main import main

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "chat.jsonl").write_text("\n".join(chat(f"q {i}", f"a {i}") for i in range(6)) + "\n")
    (project / "reviews.csv").write_text("text,label\n" + "".join(f"review {i},{'pos' if i < 5 else 'neg'}\n"
                                                               for i in range(7)))  # fmt: skip
    cfg = project / "cfg.yaml"
    cfg.write_text(f"model: {{source: {tiny_model_dir}}}\ndata:\n  train: [chat.jsonl, reviews.csv]\n"
                   "  val_fraction: 0.0\n  cache_dir: cache\n")  # fmt: skip
    monkeypatch.chdir(elsewhere)
    assert main(["data", "prepare", str(cfg), "--out", "out"]) == 0
    entries = [p for p in (project / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "report.json").is_file()  # under the config's folder, not cwd
    assert not (elsewhere / "cache").exists()
    report = json.loads((elsewhere / "out" / "report.json").read_text())
    assert report["labels"] == {"pos": 5, "neg": 2}
    for name in ("lengths.png", "labels.png"):
        assert (elsewhere / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in (elsewhere / "out" / "report.md").read_text()
    assert main(["data", "prepare", str(cfg), "--out", "out", "--set", "data.cache_dir=here"]) == 0
    assert (elsewhere / "here").is_dir()  # given on the command line: relative to the current folder
