"""The methods, one line each: every method module exposes `METHOD = Method(config=..., apply_=..., ...)`."""

from __future__ import annotations

from typing import Any, Union

from tunelab.core.registry import register
from tunelab.methods import adapter, dora, freeze, full, hybrid, ia3, lora, prefix, prompt, qlora
from tunelab.methods.base import Method

METHODS: dict[str, Method[Any]] = {}
for _method in (
    full.METHOD,
    freeze.METHOD,
    lora.METHOD,
    dora.METHOD,
    qlora.METHOD,
    ia3.METHOD,
    prefix.METHOD,
    prompt.METHOD,
    adapter.METHOD,
    hybrid.METHOD,
):
    register(METHODS, _method.name, _method, "method")

METHOD_CONFIGS = {name: method.config for name, method in METHODS.items()}
MethodConfig = Union[tuple(METHOD_CONFIGS.values())]  # noqa: UP007 - built at run time from the registry
