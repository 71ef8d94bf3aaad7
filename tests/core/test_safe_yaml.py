"""Config files from someone else: a small hostile file is a clear error in well under a second, not a hang, an
out-of-memory kill or a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.core import safe_yaml
from tunelab.core.errors import ConfigError, RunError
from tunelab.methods.trained import read_run

# 411 bytes that describe 9^9 (387 million) strings through aliases.
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "run.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_an_alias_bomb_is_refused_by_validate_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {train: x.jsonl}\n" + BOMB)
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "validate", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "expand to more than 100,000 values" in done.stderr and f"{path}:" in done.stderr
    assert "Traceback" not in done.stderr


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  train: &files [a.jsonl, b.jsonl]\n  validation: *files\n")
    cfg = load_config(path)
    assert cfg.data.validation == cfg.data.train == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nest deeper than 64 levels"),
        ("a: &x\n  b: *x\n", "the alias \\*x is inside the value it names"),
        ("training:\n  seed: " + "9" * 5000 + "\n", "a value cannot be read"),
        (b'data:\n  train: "caf\xe9.jsonl"\n', r"run.yaml:2: byte 0xe9 at column 14 is not valid UTF-8"),
        ("a: " + "x" * (safe_yaml.MAX_BYTES + 1), "larger than 1 MiB"),
        ("data: {train: x.jsonl}\nmodel: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ],
)
def test_hostile_or_broken_files_are_config_errors(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, content))


def test_an_override_value_is_read_within_the_same_bounds() -> None:
    with pytest.raises(ConfigError, match=r"override 'training\.seed=9"):
        load_config(None, ["data.train=x", "training.seed=" + "9" * 5000])


def test_a_run_folder_with_a_hostile_config_is_a_run_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: {source: x}\nmethod: {name: lora}\n" + BOMB)
    with pytest.raises(RunError, match="expand to more than 100,000 values"):
        read_run(tmp_path)
