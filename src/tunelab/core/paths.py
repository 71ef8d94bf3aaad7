"""Where tunelab keeps what it builds once and reuses: converted models, prepared datasets, teacher caches."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home() -> Path:
    """`$TUNELAB_HOME`, default `~/.cache/tunelab`."""
    return Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab"))
