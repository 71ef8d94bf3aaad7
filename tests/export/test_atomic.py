"""`tunelab merge` / `tunelab export` write into a folder beside the target and rename it into place: an export
over an older one keeps none of the older one's files, a failure (here a real full disk) leaves the old content
as it was with no temporary folder behind, and a folder holding something else than a model is not replaced."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.disk import small_disk
from tests.helpers import tiny_config
from tunelab.cli.main import main as cli_main
from tunelab.core.errors import RunError
from tunelab.export.formats import export
from tunelab.recipes.run import run_training


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("atomic")
    cfg = tiny_config(tmp, tiny_model_dir, "method.r=4", "training.max_steps=2", "eval.baseline=false",
                      "eval.generate=false")  # fmt: skip
    return run_training(cfg).run_dir


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_an_export_replaces_the_older_one_whole(run_dir: Path) -> None:
    out = run_dir / "merged"
    assert cli_main(["merge", str(run_dir)]) == 0
    stale = out / "model-00002-of-00002.safetensors"  # a shard of an older, larger export
    stale.write_bytes(b"stale")
    assert cli_main(["merge", str(run_dir)]) == 0
    assert not stale.exists() and (out / "config.json").is_file()
    AutoModelForCausalLM.from_pretrained(out)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")], "no temporary folder left"

    adapter = export(str(run_dir), "peft", run_dir / "lora")
    (adapter / "notes.bin").write_bytes(b"stale")
    export(str(run_dir), "peft", adapter)
    assert not (adapter / "notes.bin").exists() and (adapter / "adapter_model.safetensors").is_file()


def test_a_folder_that_is_not_a_model_is_not_replaced(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for fmt in ("hf", "peft"):
        with pytest.raises(RunError, match="holds no model"):
            export(str(run_dir), fmt, out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_full_disk_leaves_the_old_export_as_it_was(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_disk(tmp_path / "disk", "128k") as disk:
        out = disk / "merged"
        out.mkdir()
        (out / "config.json").write_text('{"old": true}')
        (out / "model.safetensors").write_bytes(b"old weights")
        before = digests(out)
        assert cli_main(["merge", str(run_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "No space left" in err and "merged" in err and "left as it was" in err and "Traceback" not in err
        assert digests(out) == before
        assert [p.name for p in disk.iterdir()] == ["merged"], "no temporary folder left"
