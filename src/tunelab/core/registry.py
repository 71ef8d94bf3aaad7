"""Registries are plain dicts, filled one explicit line per entry; a second entry under a name is a bug."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def register(registry: dict[str, T], name: str, entry: T, kind: str) -> None:
    """Add `entry` under `name`, refusing a name that is already there (`kind` names what it is, for the error)."""
    if name in registry:
        raise ValueError(f"{kind} {name!r} is registered twice")
    registry[name] = entry
