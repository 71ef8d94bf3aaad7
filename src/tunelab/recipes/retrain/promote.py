"""The champion pointer: which run of a family is the one to serve.

A family is a first run and every retrain grown from it (`lineage.json` names the root). Its pointer,
`<root>-champion.json` beside the root run, names the promoted run, its trained result (the adapter a server swaps
in) and the gate that promoted it. It is written atomically, so a server reloading it reads the old pointer or
the new one, never half of one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.core.errors import DataError
from tunelab.core.files import write_text
from tunelab.methods.trained import read_run

LINEAGE = "lineage.json"


def root_of(run_dir: Path) -> Path:
    """The family's first run: the `root` a retrain's lineage names, else `run_dir` itself."""
    lineage = run_dir / LINEAGE
    if lineage.is_file():
        root = json.loads(lineage.read_text()).get("root")
        if root:
            return Path(root)
    return run_dir


def champion_file(run_dir: Path) -> Path:
    """The family's pointer file (`<root>-champion.json` beside the root run)."""
    root = root_of(run_dir).resolve()
    return root.parent / f"{root.name}-champion.json"


def promote(pointer: Path, run_dir: Path, parent: Path, gate: Path) -> Path:
    """Make `run_dir` the champion: write the pointer naming it, its trained result and the gate's file."""
    run = read_run(run_dir)
    payload = {"run": str(run_dir.resolve()), "method": run.method, "artifact": str(run.artifact.resolve()),
               "base": run.source, "parent": str(parent.resolve()), "gate": str(gate.resolve()),
               "promoted": time.time()}  # fmt: skip
    write_text(pointer, json.dumps(payload, indent=2))
    return pointer


def read_champion(pointer: Path) -> dict[str, Any]:
    """The pointer's contents; a missing or unreadable pointer is a DataError saying which."""
    if not pointer.is_file():
        raise DataError(f"The champion pointer '{pointer}' does not exist yet: no challenger has been promoted.")
    try:
        payload = json.loads(pointer.read_text())
        return {"run": payload["run"], "method": payload["method"], "artifact": payload["artifact"],
                "base": payload["base"], **payload}  # fmt: skip
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"The champion pointer '{pointer}' is not one `tunelab retrain` wrote ({exc}).") from None
