"""Structured answers: when the reference is a JSON object or array, does the prediction parse, does it have the
reference's shape (the same keys, values of the same JSON types, all the way down), and, given a JSON Schema, does
it validate?

Exact match says whether the whole answer is right; these say whether it is usable by the program that reads it,
which is what a model tuned for function calling or extraction is mostly tuned for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from tunelab.core.errors import ConfigError


def parse_structured(text: str) -> Any | None:
    """The JSON object or array `text` holds (surrounding whitespace allowed), or None when it holds anything else
    (a bare number or string is an answer, not a structure)."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def same_shape(pred: Any, ref: Any) -> bool:
    """Whether `pred` has the structure of `ref`: the same JSON type; objects with the same keys, each value of
    the same shape; arrays whose every element has the shape of the reference's first element (any length, so a
    list of records matches a list of records). Integers and floats are both numbers."""
    if _kind(pred) != _kind(ref):
        return False
    if isinstance(ref, dict):
        return pred.keys() == ref.keys() and all(same_shape(pred[k], ref[k]) for k in ref)
    if isinstance(ref, list) and ref:
        return all(same_shape(item, ref[0]) for item in pred)
    return True


def structured_scores(pred: str, ref: str, validator: Draft202012Validator | None = None) -> dict[str, float]:
    """`json_valid` (the prediction parses as JSON), `json_match` (and has the reference's shape) and, with a
    schema's validator, `json_schema` (and validates), each 0 or 1. Empty when the reference is not JSON."""
    target = parse_structured(ref)
    if target is None:
        return {}
    try:
        answer, valid = json.loads(pred.strip()), 1.0
    except json.JSONDecodeError:
        answer, valid = None, 0.0
    scores = {"json_valid": valid, "json_match": float(bool(valid) and same_shape(answer, target))}
    if validator is not None:
        scores["json_schema"] = float(bool(valid) and validator.is_valid(answer))
    return scores


def is_structured_task(references: list[str]) -> bool:
    """Whether every reference is a JSON object or array, so the structured scores apply to every row."""
    return bool(references) and all(parse_structured(r) is not None for r in references)


def load_schema(path: str | Path) -> Draft202012Validator:
    """A JSON Schema file, checked, as a validator (draft 2020-12 unless the schema's `$schema` says otherwise)."""
    path = Path(path)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
    except OSError as exc:
        raise ConfigError(f"Cannot read the JSON schema '{path}': {exc.strerror}. Give an existing file.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a schema is a JSON document.") from None
    except SchemaError as exc:
        raise ConfigError(f"{path}: not a valid JSON Schema: {exc.message}. Fix the schema.") from None
    return Draft202012Validator(schema)
