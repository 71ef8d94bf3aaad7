"""Checks for requests that send token ids instead of text (`/v1/embeddings` input, a list or a list of lists).

An id outside the model's embedding table is an index error inside the forward pass: a 500 on the CPU, a
device-side assert that breaks the whole process on CUDA. JSON adds its own traps: pydantic would read `true`
as 1 and `3.0` as 3. So ids are checked here, first their types (when the request is parsed, before pydantic
converts anything), then their range (where the model's vocabulary size is known).
"""

from __future__ import annotations

import json


def token_id_problem(value: object, vocab_size: int | None = None, field: str = "input") -> str | None:
    """The first problem with token-id input `value`, as a sentence naming the id and its place; None if fine.

    Texts (a string, or a list of strings) are not token ids and have no problem here. Without `vocab_size`
    only types are checked (integers, not booleans; non-empty lists)."""
    if not isinstance(value, list) or not value or all(isinstance(item, str) for item in value):
        return None
    nested = isinstance(value[0], list)
    rows = [(f"{field}[{i}]", row) for i, row in enumerate(value)] if nested else [(field, value)]
    for where, row in rows:
        if not isinstance(row, list):
            return f"{where} is {_show(row)}; give token ids as a list of integers, or a list of such lists."
        if not row:
            return f"{where} is an empty list of token ids; give at least one id."
        for j, token in enumerate(row):
            if isinstance(token, bool) or not isinstance(token, int):
                return f"{where}[{j}] is {_show(token)}, not a token id: ids are integers, 0 up to the vocabulary size."
            if vocab_size is not None and not 0 <= token < vocab_size:
                return (
                    f"{where}[{j}] is {token}, outside this model's vocabulary of {vocab_size} tokens "
                    f"(ids 0 to {vocab_size - 1})."
                )
    return None


def _show(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
