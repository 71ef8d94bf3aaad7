from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import dump_config, load_config
from tunelab.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_only_data_is_a_complete_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data:\n  train: my.jsonl\n"))
    assert cfg.data.train == [str(tmp_path / "my.jsonl")]  # relative to the config file
    assert cfg.method.name == "lora" and cfg.model.source == "smollm2-135m"


def test_misspelled_key_names_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  train: x.jsonl\ntraining:\n  learnin_rate: 1e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}:4" in text and "training.learnin_rate" in text and "Did you mean 'learning_rate'?" in text


def test_method_keys_are_checked_against_the_chosen_method(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        load_config(write(tmp_path, "data: {train: x.jsonl}\nmethod: {name: lora, alpah: 8}\n"))
    with pytest.raises(ConfigError, match=r"'lorra' is not a method\. Did you mean 'lora'"):
        load_config(None, ["data.train=x", "method=lorra"])


def test_bad_value_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        load_config(None, ["data.train=x", "training.batch_size=0"])
    with pytest.raises(ConfigError, match="'data' is required"):
        load_config(write(tmp_path, "training: {epochs: 2}\n"))


def test_overrides_win_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "data: {train: x.jsonl}\n"), ["training.learning_rate=5e-5", "method=full"])
    assert cfg.training.learning_rate == 5e-5 and cfg.method.name == "full"
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
