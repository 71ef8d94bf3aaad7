"""The start-a-run form, built from the config schema (`TunelabConfig`'s pydantic sections): one input per scalar
field (numbers, text, switches, choices; lists of text as comma-separated values) with the field's docstring as
its help. Nested structures (adversarial training, stages, a tune: space) are left to an uploaded YAML.

A submitted form becomes `section.key=value` overrides of the fields that differ from their defaults, validated by
`load_config` exactly as `tunelab validate` does: the errors shown are its sentences, each also beside its field.
Every path in the resulting config must lie inside the folders the dashboard may read (`paths.within_any`), and the
run's folder is always the runs folder itself.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.methods.registry import METHOD_CONFIGS
from tunelab.objectives.registry import OBJECTIVE_CONFIGS
from tunelab.ui.paths import within_any

SECTIONS = ("model", "data", "method", "objective", "training", "eval")
PATH_PREFIXES = ("/", "~", "./", "../", "file:", "sqlite:///")
"""A config string starting like this names a file or folder, which must lie inside the allowed folders."""


@dataclass
class FormField:
    """One input of the form."""

    key: str
    """Dotted config key, e.g. training.learning_rate; also the input's name."""
    kind: Literal["bool", "choice", "number", "text", "list"]
    default: str
    help: str
    choices: list[str]
    required: bool = False


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without `| None` (and Annotated), and whether None was allowed."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, optional
            annotation = args[0]
        else:
            return annotation, optional


def _default_text(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None or isinstance(value, BaseModel):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def form_field(key: str, info: FieldInfo) -> FormField | None:
    """The input for one config field, or None for a structure the form leaves to YAML."""
    annotation, _ = _unwrap(info.annotation)
    origin = typing.get_origin(annotation)
    help_text = (info.description or "").strip()
    default = _default_text(info)
    if annotation is bool:
        return FormField(key, "bool", default, help_text, ["true", "false"])
    if origin is Literal:
        return FormField(key, "choice", default, help_text, [str(a) for a in typing.get_args(annotation)])
    if annotation in (int, float):
        return FormField(key, "number", default, help_text, [])
    if annotation is str:
        return FormField(key, "text", default, help_text, [], required=info.is_required())
    if origin is list and typing.get_args(annotation) and _unwrap(typing.get_args(annotation)[0])[0] is str:
        return FormField(key, "list", default, help_text, [], required=info.is_required())
    return None


def section_fields(prefix: str, section: type[BaseModel]) -> list[FormField]:
    fields = []
    for name, info in section.model_fields.items():
        if name == "name" and prefix in ("method", "objective"):
            continue
        found = form_field(f"{prefix}.{name}", info)
        if found is not None:
            fields.append(found)
    return fields


def form_sections(method: str, objective: str) -> list[tuple[str, list[FormField]]]:
    """The form's sections in order; method and objective show the fields of the chosen ones."""
    chosen: dict[str, type[BaseModel]] = {"method": METHOD_CONFIGS[method], "objective": OBJECTIVE_CONFIGS[objective]}
    out = []
    for name in SECTIONS:
        section = chosen.get(name) or _section_type(name)
        fields = section_fields(name, section)
        if name in chosen:
            names = list(METHOD_CONFIGS if name == "method" else OBJECTIVE_CONFIGS)
            help_text = (TunelabConfig.model_fields[name].description or f"Which {name}.").strip()
            picked = method if name == "method" else objective
            fields.insert(0, FormField(f"{name}.name", "choice", picked, help_text, names))
        out.append((name, fields))
    return out


def _section_type(name: str) -> type[BaseModel]:
    annotation, _ = _unwrap(TunelabConfig.model_fields[name].annotation)
    return annotation


def overrides_from(values: dict[str, str], method: str, objective: str) -> list[str]:
    """`key=value` overrides for the submitted values that differ from the field's default."""
    overrides = [f"method.name={method}", f"objective.name={objective}"]
    for _, fields in form_sections(method, objective):
        for f in fields:
            raw = values.get(f.key, "").strip()
            if f.key in ("method.name", "objective.name") or raw == f.default or (raw == "" and not f.required):
                continue
            overrides.append(f"{f.key}={_yaml_value(f, raw)}")
    return overrides


def _yaml_value(f: FormField, raw: str) -> str:
    if f.kind == "list":
        return json.dumps([part.strip() for part in raw.split(",") if part.strip()])
    if f.kind == "text":
        return json.dumps(raw)  # quoted: a name such as `123` or `yes` stays text
    return raw


def field_errors(message: str) -> dict[str, str]:
    """Each problem sentence of a `ConfigError` by the dotted key it names."""
    found: dict[str, str] = {}
    for sentence in re.split(r"(?=command line: )", message):
        match = re.search(r"'([a-z_]+(?:\.[A-Za-z0-9_]+)+)'", sentence)
        if match:
            found.setdefault(match.group(1), sentence.strip())
    return found


def config_paths(doc: Any, where: str = "") -> list[tuple[str, str]]:
    """Every (key, value) string in a config document that names a file or folder."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in config_paths(v, f"{where}.{k}" if where else str(k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in config_paths(v, f"{where}[{i}]")]
    if isinstance(doc, str) and doc.startswith(PATH_PREFIXES):
        return [(where, doc)]
    return []


def _bare(value: str) -> str:
    for scheme in ("sqlite:///", "file://", "file:"):
        if value.startswith(scheme):
            return value[len(scheme) :] or "/"
    return value


def checked_config(cfg: TunelabConfig, root: Path, readable: list[Path], name: str) -> TunelabConfig:
    """`cfg` with its run folder set to `root / name`, refused unless every path in it lies in `readable` and
    its data files exist (as `tunelab validate` checks)."""
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(root), "name": name})})
    for key, value in config_paths(cfg.model_dump(mode="json", exclude={"output": {"dir"}})):
        try:
            within_any(readable, _bare(value))
        except TunelabError as exc:
            raise ConfigError(f"'{key}': {exc}") from None
    missing = [p for p in cfg.data.train + cfg.data.validation if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"data file(s) not found: {', '.join(missing)}. Fix data.train/validation.")
    return cfg


def config_from_form(values: dict[str, str], root: Path, readable: list[Path], name: str) -> TunelabConfig:
    """The validated config a submitted form describes (ConfigError with `tunelab validate`'s sentences)."""
    method, objective = values.get("method.name", "lora"), values.get("objective.name", "sft")
    if method not in METHOD_CONFIGS or objective not in OBJECTIVE_CONFIGS:
        raise ConfigError(f"Unknown method '{method}' or objective '{objective}'.")
    resolved = dict(values)
    for key in ("data.train", "data.validation"):
        parts = [p.strip() for p in resolved.get(key, "").split(",") if p.strip()]
        try:
            resolved[key] = ", ".join(str(within_any(readable, p)) for p in parts)
        except TunelabError as exc:
            raise ConfigError(f"'{key}': {exc}") from None
    return checked_config(load_config(None, overrides_from(resolved, method, objective)), root, readable, name)
