"""The start-a-run form, built from the config schema (`TunelabConfig`'s pydantic sections): one input per field
of every section a run reads, sub-sections included (data.clean.*, training.adversarial.*, continual.replay.*),
each with the field's docstring as its help:

- switches and choices (a `Literal`, or `auto | true | false`) as selects, numbers and text as inputs;
- lists of text or numbers (target modules, frozen layers, trackers) as comma-separated values;
- everything else (mappings such as training.task_weights, lists of structures such as objective.rewards or
  stages, `int | auto | null` settings) as YAML, one line or a small text area, read with the config's own bounded
  YAML reader.

The method's and objective's fields are those of the chosen method and objective. The dashboard sets the run's
folder itself (output.dir, output.name); a `tune:` space belongs to `tunelab tune`, not to a run, and is left out.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from tunelab.config import TunelabConfig, load_config
from tunelab.core import safe_yaml
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.methods.registry import METHOD_CONFIGS
from tunelab.objectives.registry import OBJECTIVE_CONFIGS
from tunelab.ui.paths import within_any

SECTIONS = ("model", "data", "method", "objective", "training", "eval", "output", "continual", "stages")
HIDDEN = frozenset({"output.dir", "output.name", "training.auto"})
"""Fields the form does not offer: the run's folder is the dashboard's to choose, and `training.auto` is what the
run derives from the settings written `auto`."""
PATH_PREFIXES = ("/", "~", "./", "../", "file:", "sqlite:///")
"""A config string starting like this names a file or folder, which must lie inside the allowed folders."""
_NAMED = frozenset({*METHOD_CONFIGS.values(), *OBJECTIVE_CONFIGS.values()})
"""Sections whose `name` field is their kind (chosen by the method/objective select, fixed below it)."""


@dataclass
class FormField:
    """One input of the form."""

    key: str
    """Dotted config key, e.g. training.learning_rate; also the input's name."""
    kind: Literal["bool", "choice", "number", "text", "list", "value", "yaml", "section"]
    """`list`: comma-separated values; `value`: one line of YAML; `yaml`: a text area of YAML; `section`: on/off of
    an optional sub-section (training.adversarial), whose fields follow it and count only when it is on."""
    default: str
    help: str
    choices: list[str]
    required: bool = False
    text_items: bool = True
    """For a list: its items are text (quoted as given) rather than numbers."""
    literals: list[str] = field(default_factory=list)
    """For a list: words that stand for the whole value instead of a list (`all-linear`)."""


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
                return typing.Union[tuple(args)], optional  # noqa: UP007 (a Union built at run time)
            annotation = args[0]
        else:
            return annotation, optional


def _members(annotation: Any) -> list[Any]:
    """The members of a union (unwrapped), or the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [_unwrap(a)[0] for a in typing.get_args(annotation)]
    return [annotation]


def _scalar_item(annotation: Any) -> bool | None:
    """For a list's item type: True when it is text (str or a Literal of words), False for a number, None else."""
    item, _ = _unwrap(annotation)
    if item is str or typing.get_origin(item) is Literal:
        return True
    if item in (int, float):
        return False
    return None


def _list_of_scalars(annotation: Any) -> bool | None:
    """Whether `annotation` is a list/tuple of one scalar type: text (True), numbers (False) or neither (None)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return _scalar_item(args[0])
    if origin is tuple and args and Ellipsis not in args and len({_scalar_item(a) for a in args}) == 1:
        return _scalar_item(args[0])
    return None


def _yaml_text(value: Any) -> str:
    """A default as one line of YAML ("" for None)."""
    if value is None:
        return ""
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=10_000)
    return text.strip().removesuffix("...").strip()


def _plain(value: Any) -> str:
    """A scalar default as the form shows it: true/false, the number or word ("" for None)."""
    if value is None:
        return ""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _default(info: FieldInfo) -> Any:
    """The field's default (None for a required field)."""
    return None if info.is_required() else info.get_default(call_default_factory=True)


def form_field(key: str, info: FieldInfo) -> FormField:
    """The input for one config field that is not itself a section."""
    annotation, _ = _unwrap(info.annotation)
    origin = typing.get_origin(annotation)
    help_text = (info.description or "").strip()
    value = _default(info)
    required = info.is_required()
    if annotation is bool:
        return FormField(key, "bool", _plain(value), help_text, ["true", "false"])
    if origin is Literal:
        return FormField(key, "choice", _plain(value), help_text, [str(a) for a in typing.get_args(annotation)])
    if annotation in (int, float):
        return FormField(key, "number", _plain(value), help_text, [])
    if annotation is str:
        return FormField(key, "text", "" if value is None else str(value), help_text, [], required=required)
    members = _members(annotation)
    words = [str(a) for m in members if typing.get_origin(m) is Literal for a in typing.get_args(m)]
    rest = [m for m in members if typing.get_origin(m) is not Literal]
    if rest == [bool]:  # auto | true | false
        return FormField(key, "choice", _plain(value), help_text, [*words, "true", "false"])
    items = [_list_of_scalars(m) for m in rest]
    if len(items) == 1 and items[0] is not None:
        listed = typing.get_args(rest[0])
        item_words = [str(a) for t in listed if typing.get_origin(_unwrap(t)[0]) is Literal
                      for a in typing.get_args(_unwrap(t)[0])]  # fmt: skip
        if item_words:
            help_text = f"{help_text} One or more of: {', '.join(item_words)}.".strip()
        shown = value if isinstance(value, str) else ", ".join(str(v) for v in value or [])
        return FormField(key, "list", shown, help_text, [], required=required, text_items=items[0], literals=words)
    scalar = all(m in (int, float, str, bool) or typing.get_origin(m) is Literal for m in members)
    help_text = f"{help_text} (YAML)" if help_text else "YAML"
    return FormField(key, "value" if scalar else "yaml", _yaml_text(value), help_text, [], required=required)


def _section_of(annotation: Any) -> type[BaseModel] | None:
    annotation, _ = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def section_fields(prefix: str, section: type[BaseModel]) -> list[FormField]:
    """The inputs of a section's fields, sub-sections' fields in place (`prefix.sub.key`)."""
    fields = []
    for name, info in section.model_fields.items():
        key = f"{prefix}.{name}"
        if key in HIDDEN or (name == "name" and section in _NAMED):
            continue
        sub = _section_of(info.annotation)
        if sub is None:
            fields.append(form_field(key, info))
            continue
        if _switched(info):
            fields.append(_switch(key, info))
        fields += section_fields(key, sub)
    return fields


def _switched(info: FieldInfo) -> bool:
    """Whether a section field is optional and absent by default (then it gets an on/off switch)."""
    return not info.is_required() and _default(info) is None


def _switch(key: str, info: FieldInfo) -> FormField:
    help_text = f"{(info.description or '').strip()} Its settings below apply when on.".strip()
    return FormField(key, "section", "off", help_text, ["off", "on"])


def form_sections(method: str, objective: str) -> list[tuple[str, list[FormField]]]:
    """The form's sections in order; method and objective show the fields of the chosen ones."""
    chosen: dict[str, type[BaseModel]] = {"method": METHOD_CONFIGS[method], "objective": OBJECTIVE_CONFIGS[objective]}
    out = []
    for name in SECTIONS:
        info = TunelabConfig.model_fields[name]
        section = chosen.get(name) or _section_of(info.annotation)
        fields = section_fields(name, section) if section is not None else [form_field(name, info)]
        if section is not None and name not in chosen and _switched(info):
            fields.insert(0, _switch(name, info))
        if name in chosen:
            names = list(METHOD_CONFIGS if name == "method" else OBJECTIVE_CONFIGS)
            help_text = (info.description or f"Which {name}.").strip()
            picked = method if name == "method" else objective
            fields.insert(0, FormField(f"{name}.name", "choice", picked, help_text, names))
        out.append((name, fields))
    return out


def overrides_from(values: dict[str, str], method: str, objective: str) -> list[str]:
    """`key=value` overrides for the submitted values that differ from the field's default."""
    overrides = [f"method.name={method}", f"objective.name={objective}"]
    off: list[str] = []
    for _, fields in form_sections(method, objective):
        for f in fields:
            raw = values.get(f.key, "").strip()
            if any(f.key.startswith(f"{prefix}.") for prefix in off):
                continue
            if f.kind == "section":
                if raw == "on":
                    overrides.append(f"{f.key}={{}}")
                else:
                    off.append(f.key)
                continue
            if f.key in ("method.name", "objective.name") or raw == f.default or (raw == "" and not f.required):
                continue
            value = _yaml_value(f, raw)
            if value is not None:
                overrides.append(f"{f.key}={value}")
    return overrides


def _yaml_value(f: FormField, raw: str) -> str | None:
    """The override's value for a submitted input (None: the same as the default, written differently)."""
    if f.kind == "list":
        if raw in f.literals:
            return json.dumps(raw)
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        return json.dumps(parts) if f.text_items else f"[{', '.join(parts)}]"
    if f.kind == "text":
        return json.dumps(raw)  # quoted: a name such as `123` or `yes` stays text
    if f.kind in ("value", "yaml"):
        try:
            value = safe_yaml.load(raw, f"'{f.key}'")[0]
        except ConfigError as exc:
            raise ConfigError(f"'{f.key}': this is not valid YAML ({exc}). Write it as in a config file.") from None
        default = safe_yaml.load(f.default, f"'{f.key}'")[0] if f.default else None
        return None if value == default else json.dumps(value)
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
