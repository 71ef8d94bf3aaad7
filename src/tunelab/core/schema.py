"""The base class of every config section, the YAML reader, and the explanation of validation errors, shared by the
run config (`tunelab.config`) and merge recipes (`tunelab.export.merging.config`): values plus the line of every
key, and one sentence per problem naming the key, its line and the closest valid key."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tunelab.core import safe_yaml
from tunelab.core.errors import ConfigError, did_you_mean


class Section(BaseModel):
    """A config section: unknown keys are errors, and each field's docstring is its help text."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def read_yaml_mapping(path: Path, top_level: str) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file's top-level mapping and its dotted keys' 1-based lines (list items by index, as pydantic
    names them), read within `safe_yaml`'s bounds. `top_level` says what the mapping should hold, for the error
    when it is not one."""
    raw, node = safe_yaml.load(safe_yaml.read_text(path), str(path))
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping ({top_level}).")
    return raw, key_lines(node)


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


@dataclass(frozen=True)
class TaggedUnion:
    """A section that is one of several models, chosen by its `name` (a method, an objective)."""

    what: str
    """How the message calls one of them: "a method"."""
    choices: Mapping[str, type[BaseModel]]


def explain(
    exc: ValidationError,
    where: str,
    lines: Mapping[str, int],
    root: type[BaseModel],
    tagged: Mapping[str, TaggedUnion] | None = None,
) -> list[str]:
    """One sentence per problem of `exc` (raised validating `root` from `where`): the dotted key, its line, what is
    wrong, and for an unknown key or name the closest valid one."""
    tagged = tagged or {}
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        union = tagged.get(str(loc[0])) if loc else None
        section: type[BaseModel] | None = None
        if union is not None and len(loc) > 1 and loc[1] in union.choices:
            # pydantic puts the union's tag into the location: method.lora.r -> method.r
            section = union.choices[str(loc[1])]
            loc = (loc[0], *loc[2:])
        dotted = ".".join(str(p) for p in loc)
        line = lines.get(dotted)
        at = f"{where}:{line}" if line else where
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = keys_of(section) if section is not None and len(loc) == 2 else keys_at(root, loc, tagged)
            unknown = str(loc[-1]) if loc else ""  # pydantic always names the extra key
            problems.append(f"{at}: unknown key '{dotted}'.{did_you_mean(unknown, valid)}")
        elif kind == "missing":
            problems.append(f"{at}: '{dotted}' is required.")
        elif kind in ("union_tag_invalid", "union_tag_not_found") and union is not None:
            tag = str(err.get("ctx", {}).get("tag", ""))
            names = list(union.choices)
            kind_name = union.what.split()[-1]
            hint = did_you_mean(tag, names)
            problems.append(f"{at}: '{tag}' is not {union.what}.{hint} Valid {kind_name}s: {', '.join(names)}.")
        else:
            problems.append(f"{at}: '{dotted}': {err['msg']} (got {err.get('input')!r}).")
    return problems


def keys_of(section: type[BaseModel]) -> list[str]:
    """A section's keys as written in YAML (a field's alias where it has one)."""
    return [f.alias or name for name, f in section.model_fields.items()]


def keys_at(root: type[BaseModel], loc: tuple[Any, ...], tagged: Mapping[str, TaggedUnion] | None = None) -> list[str]:
    """The valid keys of the section that holds the last element of `loc`, found by walking `root`'s fields
    (through lists and optional sections)."""
    section: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int) or section is None:
            continue
        fields = {f.alias or name: f for name, f in section.model_fields.items()} | section.model_fields
        field = fields.get(str(part))
        section = _section_in(field.annotation) if field is not None else None
    return keys_of(section) if section is not None else []


def _section_in(annotation: Any) -> type[BaseModel] | None:
    """The model class in a field's annotation: itself, or inside list[...] / X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_in(arg)
        if found is not None:
            return found
    return None
