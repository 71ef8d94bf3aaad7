"""Nested training state (optimizer and scheduler state dicts, RNG states) as two files that cannot run code when
read: `NAME.json` holds the structure and every plain value, `NAME.safetensors` every tensor, which the JSON names.

Pickle (`torch.save`, `torch.load(weights_only=False)`) would be shorter, but reading a pickle runs whatever the
file says: a checkpoint in a shared run folder could run code in whoever resumes it. JSON and safetensors only
hold data. Types a state dict uses that JSON lacks are tagged: tuples (AdamW's betas), dicts with non-string keys
(an optimizer state keyed by parameter index), and tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_TAGS = (_TENSOR, _TUPLE, _ITEMS)


def encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON-ready data, its tensors moved into `tensors` (CPU, contiguous) and named in their place."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # own storage: safetensors refuses shared memory
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: encode(v, tensors) for k, v in obj.items()}
        return {_ITEMS: [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj  # NaN and inf too: Python's json writes and reads them
    raise TypeError(f"training state holds a {type(obj).__name__}, which has no safe file form: {obj!r:.80}")


def decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode`."""
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if _TENSOR in data:
        return tensors[data[_TENSOR]]
    if _TUPLE in data:
        return tuple(decode(v, tensors) for v in data[_TUPLE])
    if _ITEMS in data:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in data[_ITEMS]}
    return {k: decode(v, tensors) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def write_state(base: Path, obj: Any) -> tuple[Path, Path]:
    """Write `obj` as `base.json` and `base.safetensors` (not fsynced: the caller publishes the folder)."""
    tensors: dict[str, torch.Tensor] = {}
    data = encode(obj, tensors)
    json_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    save_file(tensors, tensor_path)
    json_path.write_text(json.dumps(data))
    return json_path, tensor_path


def read_state(base: Path) -> Any:
    """Read what `write_state` wrote. Nothing in either file is executed."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(base.with_suffix(".safetensors"), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[key] = fh.get_tensor(key)
    return decode(json.loads(base.with_suffix(".json").read_text()), tensors)


def state_bytes(obj: Any) -> int:
    """Bytes of the tensors in `obj` (what its safetensors file will hold, near enough)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(state_bytes(v) for v in obj)
    return 0
