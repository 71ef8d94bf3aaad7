"""YAML that someone else may have written (a config from a colleague, a run folder on a shared disk): bounded before
it is built, so that a small file cannot take the process's time and memory.

PyYAML's safe loader runs no code, but it still builds whatever the file describes. Aliases make that exponential:
nine lines of `b: [*a, *a, *a, ...]` that each repeat the one before describe 10^9 values in 411 bytes, and every
walk over the result (the key lines, pydantic's validation) visits each of them. Nesting is recursive in the
composer, so ten thousand `[` end in a RecursionError. So the event stream (iterative, linear in the file) is checked
first: size, nesting depth, and the number of values the aliases expand to; only then is the document built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunelab.core.errors import ConfigError

MAX_BYTES = 1 << 20
"""A config is settings, not data: 1 MiB is far above any real one (data goes in data files)."""
MAX_DEPTH = 64
"""Nesting of mappings and lists; the deepest real config nests about 5 levels."""
MAX_VALUES = 100_000
"""Values the document holds once every alias is expanded."""


def read_text(path: Path, what: str = "config file") -> str:
    """A YAML file's text: at most `MAX_BYTES`, valid UTF-8 (a BOM is allowed); `ConfigError` otherwise."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"The {what} '{path}' cannot be read ({exc.strerror}). Check the path and permissions."
        ) from None
    if len(data) > MAX_BYTES:
        raise ConfigError(
            f"The {what} '{path}' is larger than {MAX_BYTES >> 20} MiB; a config holds settings only. Put data in data "
            "files and name them in the config (data.train)."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}:{line}: byte {data[exc.start]:#04x} at column {column} is not valid UTF-8. Save the {what} as "
            "UTF-8 (most editors offer it under 'encoding')."
        ) from None


def load(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """The document in `text` and its composed node tree (for key lines), after checking its depth and expanded
    size; a YAML error, or a value Python refuses (an integer of thousands of digits), is a `ConfigError`."""
    try:
        check_shape(text, where)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            value = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}. Fix the syntax (indentation, quotes, colons).") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: a value cannot be read: {exc}. Write it as a quoted string.") from None
    return value, node


def check_shape(text: str, where: str) -> None:
    """Refuse a document nested deeper than `MAX_DEPTH`, whose aliases expand beyond `MAX_VALUES` values, or with
    an alias inside the node it refers to (a value that contains itself)."""
    sizes: dict[str, int] = {}
    # The open mappings and lists, outermost first: each one's anchor, and how many values it holds so far.
    anchors: list[str | None] = [None]
    counts = [0]
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.CollectionStartEvent):
            anchors.append(str(event.anchor) if event.anchor else None)
            counts.append(0)
            if len(anchors) - 1 > MAX_DEPTH:
                raise ConfigError(
                    f"{where}:{line}: mappings and lists nest deeper than {MAX_DEPTH} levels. A config nests a few "
                    "levels; check for a runaway indentation or bracket."
                )
            added = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, count = anchors.pop(), counts.pop()
            if anchor:
                sizes[anchor] = count + 1
            counts[-1] += count + 1
            continue
        elif isinstance(event, yaml.AliasEvent):
            anchor = str(event.anchor)
            if anchor in anchors:
                raise ConfigError(
                    f"{where}:{line}: the alias *{anchor} is inside the value it names, so that value would hold "
                    "itself. Write the value out instead."
                )
            added = sizes.get(anchor, 1)
            counts[-1] += added
        elif isinstance(event, yaml.ScalarEvent):
            added = 1
            counts[-1] += 1
            if event.anchor:
                sizes[str(event.anchor)] = 1
        else:
            continue
        total += added
        if total > MAX_VALUES:
            raise ConfigError(
                f"{where}:{line}: the aliases (*name) expand to more than {MAX_VALUES:,} values. A config is small; "
                "write the values out, or use fewer nested aliases."
            )
