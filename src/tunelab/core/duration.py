"""Durations in configs: a number of seconds, or text such as "90s", "45m", "2h", "1h30m", "1d"."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


def seconds(value: Any) -> Any:
    """`value` in seconds when it is duration text ("2h", "1h30m", "90s", "3600"); anything else unchanged, for
    the field's own validation to judge."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"'{value}' is not a duration: write seconds (3600) or e.g. 90s, 45m, 2h, 1h30m, 1d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


Duration = Annotated[float, BeforeValidator(seconds)]
"""Seconds, written as a number or as duration text ("2h", "1h30m")."""
