"""Durable writes on a real small filesystem: a write that runs out of space mid-way is a `DiskFullError` naming
the file and the space free and needed, what was there before is left whole, and no temporary file or folder
stays behind; the same for a native writer (safetensors) that reports the OS error only in its message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.disk import small_disk
from tunelab.core.errors import DiskFullError
from tunelab.core.files import disk_full_as_error, replacing_dir, sweep_temporaries, write_bytes


def test_a_full_disk_mid_write_leaves_the_old_file_and_folder_whole(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        target = disk / "eval.json"
        write_bytes(target, b"old")
        with pytest.raises(DiskFullError) as caught:
            write_bytes(target, b"x" * 400_000)
        message = str(caught.value)
        assert "eval.json" in message and "needs about 400.0 KB" in message and "are free" in message
        assert target.read_bytes() == b"old" and sorted(p.name for p in disk.iterdir()) == ["eval.json"]

        folder = disk / "merged"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        with pytest.raises(DiskFullError, match="merged"), replacing_dir(folder) as tmp:
            save_file({"w": torch.zeros(100_000)}, tmp / "model.safetensors")  # raises SafetensorError inside
        assert [p.name for p in folder.iterdir()] == ["config.json"]
        assert sorted(p.name for p in disk.iterdir()) == ["eval.json", "merged"], "no temporary folder left"

        with replacing_dir(folder) as tmp:  # with room, the new folder replaces the old one whole
            (tmp / "model.safetensors").write_bytes(b"new")
        assert [p.name for p in folder.iterdir()] == ["model.safetensors"]


def test_only_disk_full_errors_are_translated_and_leftovers_are_swept(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a disk problem"), disk_full_as_error(tmp_path, "x"):
        raise ValueError("not a disk problem")
    (tmp_path / ".tmp-step-00000004").mkdir()
    (tmp_path / ".metrics.jsonl.1a2b3c4d.tmp").write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    removed = sweep_temporaries(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["keep.json"]
