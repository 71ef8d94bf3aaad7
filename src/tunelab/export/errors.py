"""The error every exporter raises for a user mistake (wrong format for this run, unsupported architecture)."""

from __future__ import annotations

from tunelab.core.errors import TunelabError


class ExportError(TunelabError):
    """A run or model cannot be exported in the asked format; the message says which format would work."""
