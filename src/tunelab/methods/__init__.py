"""Methods decide which weights learn. One module per method, one registry line per method.

Each method module exposes `METHOD = Method(config=..., apply_=..., save=..., load_=...)`.
"""

from __future__ import annotations

from typing import Union

from tunelab.methods import adapter, dora, freeze, full, hybrid, ia3, lora, prefix, prompt, qlora
from tunelab.methods.base import Method, register

METHODS: dict[str, Method] = {}
register(METHODS, full.METHOD)
register(METHODS, freeze.METHOD)
register(METHODS, lora.METHOD)
register(METHODS, dora.METHOD)
register(METHODS, qlora.METHOD)
register(METHODS, ia3.METHOD)
register(METHODS, prefix.METHOD)
register(METHODS, prompt.METHOD)
register(METHODS, adapter.METHOD)
register(METHODS, hybrid.METHOD)

METHOD_CONFIGS = {name: method.config for name, method in METHODS.items()}
MethodConfig = Union[tuple(METHOD_CONFIGS.values())]  # noqa: UP007 - built at run time from the registry

__all__ = ["METHODS", "METHOD_CONFIGS", "Method", "MethodConfig"]
