"""What a model cannot take is refused with the option and the reason, and `tunelab train` exits 2 on it: a folder
of an architecture transformers cannot build, the fast path forced on a family that cannot take all of it, and
rows longer than the model's context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import tiny_config
from tests.tiny_families import build_family
from tunelab.cli.main import main as cli_main
from tunelab.config import dump_config
from tunelab.core.errors import ConfigError, ModelError
from tunelab.models.families import FAMILIES, check_rows_fit
from tunelab.models.kernels.fast_path import apply_fast_path_
from tunelab.models.load import load_model, resolve_source


def _train_exit(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """`tunelab train` on the colour task with `model_dir`: asserts exit 2 without a traceback; the message."""
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(tiny_config(tmp_path, model_dir, "training.epochs=1", *overrides)))
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def _with_config(folder: Path, **changes: object) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_an_architecture_transformers_cannot_build_is_refused(tmp_path: Path, capsys) -> None:
    unknown = _with_config(build_family("llama", tmp_path / "unknown"), model_type="mamba9000")
    err = _train_exit(tmp_path, unknown, capsys)
    assert "'mamba9000' model, an architecture this transformers does not know" in err
    assert "Checked families: Llama, Qwen2" in err
    seq2seq = _with_config(build_family("llama", tmp_path / "t5"), model_type="t5", architectures=["T5Model"])
    with pytest.raises(ModelError, match="cannot load as a causal language model"):
        resolve_source(str(_with_config(seq2seq, architectures=["T5ForConditionalGeneration"])))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="has no model_type"):
        resolve_source(str(tmp_path / "bare"))


def test_the_fast_path_forced_on_a_family_that_cannot_take_it_all(tmp_path: Path, capsys) -> None:
    neox = build_family("gpt_neox", tmp_path / "neox")
    err = _train_exit(tmp_path, neox, capsys, "training.fused_modules=true")
    assert "training.fused_modules: true" in err and FAMILIES["gpt_neox"].fast_path_gaps in err
    assert "Set training.fused_modules to auto" in err
    bert = build_family("bert", tmp_path / "bert")
    with pytest.raises(ConfigError, match="encoders attend both ways"):
        apply_fast_path_(load_model(str(bert)), True)
    assert apply_fast_path_(load_model(str(neox)), False).used == ()


def test_rows_longer_than_the_context_are_refused(tmp_path: Path, capsys) -> None:
    short = _with_config(build_family("llama", tmp_path / "short"), max_position_embeddings=12)
    err = _train_exit(tmp_path, short, capsys, "data.max_length=64")
    assert "data.max_length:" in err and "context of 12 tokens" in err and "at most 12" in err


def test_rows_fit_check_by_hand() -> None:
    class Config:
        max_position_embeddings = 10

    check_rows_fit(Config(), [10, 3], 64)
    check_rows_fit(object(), [500], 64)  # no context known: nothing to check against
    with pytest.raises(ConfigError, match=r"2 training example\(s\) are longer .* the longest has 12"):
        check_rows_fit(Config(), [11, 12, 5], 64)
