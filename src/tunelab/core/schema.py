"""The base class of every config section, shared by `config.py` and the method/objective modules, and the YAML
reader both the run config and merge recipes use (values plus the line of every key, for error messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from tunelab.core.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, and each field's docstring is its help text."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def read_yaml_mapping(path: Path, top_level: str) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file's top-level mapping and its dotted keys' 1-based lines (list items by index, as pydantic
    names them). `top_level` says what the mapping should hold, for the error when it is not one."""
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
        lines = key_lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}. Fix the syntax (indentation, quotes, colons).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping ({top_level}).")
    return raw, lines


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Dotted keys of a composed YAML document -> 1-based line."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            out[dotted] = key_node.start_mark.line + 1
            out.update(key_lines(value_node, dotted + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1
            out.update(key_lines(item, f"{prefix}{i}."))
    return out
