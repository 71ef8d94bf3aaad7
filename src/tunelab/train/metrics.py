"""metrics.jsonl: one JSON object per line, appended as training goes."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from tunelab.core.files import disk_full_as_error, fsync_file, write_text
from tunelab.train.hooks import MetricsHook


class MetricsLog:
    """Appends metric lines to a file. `keep` lines already in the file survive (a resumed run); the rest go.
    The file is rewritten atomically (a kill while a resumed run starts keeps the old lines) and a full disk is a
    `DiskFullError` naming it."""

    def __init__(self, path: Path, *, enabled: bool = True, keep: int = 0, on_write: MetricsHook | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.on_write = on_write
        old = path.read_text().splitlines() if keep and path.is_file() else []
        self.lines: list[dict[str, Any]] = [json.loads(line) for line in old[:keep]]
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, "".join(json.dumps(line) + "\n" for line in self.lines), f"the metrics ({path})")

    def write(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        if self.enabled:
            with disk_full_as_error(self.path, f"a metrics line ({self.path})"), self.path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            if self.on_write is not None:
                self.on_write(line)

    def sync(self) -> None:
        """Make the lines written so far durable (before a checkpoint that counts them)."""
        if self.enabled and self.path.is_file():
            fsync_file(self.path)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def parse_metric_lines(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Every line of a metrics.jsonl that is a JSON object, and (line number, why) for each other non-blank line
    (a line cut short by a crash, say); a missing file has none of either."""
    lines: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    if not path.is_file():
        return lines, bad
    for number, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((number, exc.msg))
            continue
        if isinstance(row, dict):
            lines.append(row)
        else:
            bad.append((number, "not a JSON object"))
    return lines, bad


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl that parse (those a crash cut short are left out)."""
    return parse_metric_lines(run_dir / "metrics.jsonl")[0]
