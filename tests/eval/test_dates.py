"""The dates demo (examples/dates): its config validates, its data is what make_data.py writes, splits are clean."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import random
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT
from tunelab.config import load_config
from tunelab.data.load import load_examples

DATES = ROOT / "examples" / "dates"


@pytest.fixture(scope="module")
def make_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dates_make_data", DATES / "make_data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def test_config_validates_and_points_at_the_data() -> None:
    cfg = load_config(DATES / "config.yaml")
    assert cfg.model.source == "smollm2-135m"
    assert cfg.method.name == "lora"
    assert [Path(p) for p in cfg.data.train] == [DATES / "train.jsonl"]
    assert [Path(p) for p in cfg.data.validation] == [DATES / "test.jsonl"]
    loaded = load_examples([*cfg.data.train, *cfg.data.validation])
    assert not loaded.rejects and len(loaded.examples) == 2200


def test_committed_files_are_what_make_data_writes(make_data: ModuleType, tmp_path: Path) -> None:
    make_data.main(["--out", str(tmp_path)])
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATES / name).read_bytes(), f"rerun make_data.py ({name})"


def test_splits_are_disjoint_and_answers_are_iso_dates() -> None:
    train, test = read(DATES / "train.jsonl"), read(DATES / "test.jsonl")
    assert (len(train), len(test)) == (2000, 200)
    train_prompts = {p for p, _ in train}
    assert len(train_prompts) == len(train)
    assert not train_prompts & {p for p, _ in test}
    # No test answer date appears in train at all, as answer or inside a prompt (in ISO form).
    train_text = "\n".join(p + "\n" + a for p, a in train)
    assert not [a for _, a in test if a in train_text]
    for _, answer in train + test:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer)
        dt.date.fromisoformat(answer)


def test_spelled_out_parts(make_data: ModuleType) -> None:
    words = [make_data.ordinal_words(n) for n in (1, 9, 10, 12, 20, 21, 30, 31)]
    assert words == ["first", "ninth", "tenth", "twelfth", "twentieth", "twenty-first", "thirtieth", "thirty-first"]
    suffixes = [make_data.ordinal_suffix(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)]
    assert suffixes == ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"]


def test_numeric_dates_always_say_their_order(make_data: ModuleType) -> None:
    rng = random.Random(0)
    day = dt.date(2021, 3, 5)  # both parts <= 12: only the cue tells 5 March from 3 May
    for _ in range(200):
        text, request_cue = make_data.write_date(day, rng)
        if re.search(r"\b0?5\W0?3\W(20)?21\b", text):
            said = text + request_cue
            assert re.search(r"day first|DD/MM|day/month|D-M-Y|day comes before|day/month order", said), said
        if re.search(r"\b0?3\W0?5\W(20)?21\b", text):
            said = text + request_cue
            assert re.search(r"month first|MM/DD|month/day|M-D-Y|month comes before|month/day order", said), said
