"""Several LoRA adapters on one base model, picked per request by the request's `model`.

Adapters come from `--adapter name=path` at start and, at runtime, from one configured folder: a request for
`model: "x"` loads `ADAPTER_DIR/x` on first use. Names are checked before they touch the file system (letters,
digits, `._-`, no path separators, no `..`), the resolved folder must lie inside the adapter folder (no symlink
escapes), and it must hold a PEFT adapter in safetensors: nothing else is ever opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from peft import PeftModel

from tunelab.methods.peft_io import quiet_peft
from tunelab.serve.adapter_checks import AdapterMismatchError, ModuleSnapshot, check_adapter_fits
from tunelab.serve.engine import Engine
from tunelab.serve.errors import APIError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_adapter_folder(path: Path) -> Path:
    """`path` if it is a PEFT adapter in safetensors; raises ValueError saying what is missing otherwise."""
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"'{path}' is not a PEFT adapter in safetensors: it needs adapter_config.json and "
            "adapter_model.safetensors (export one with `tunelab export RUN --format peft`)."
        )
    return path


class Adapters:
    """The model names a server answers to: the base and its adapters (loaded now or on first request)."""

    def __init__(self, engine: Engine, base_name: str, adapter_dir: Path | None = None) -> None:
        self.engine = engine
        self.base_name = base_name
        self.adapter_dir = adapter_dir.resolve() if adapter_dir else None
        self.loaded: dict[str, Path] = {}
        self.routes: dict[str, str] = {}
        """Public name -> the peft adapter that answers it, for names whose adapter was swapped (`replace`)."""
        self._swaps = 0
        self._lock = asyncio.Lock()

    def add_now(self, name: str, path: Path) -> None:
        """Load an adapter before serving starts (blocks until the engine thread has loaded it)."""
        if not NAME.match(name) or name == self.base_name:
            raise ValueError(f"Adapter name '{name}' is not allowed: use letters, digits, '.', '_' or '-'.")
        self.engine.call(lambda: self._load(name, check_adapter_folder(path))).result()

    def names(self) -> list[str]:
        """The base, the loaded adapters, then adapters in the folder that would load on first use."""
        names = [self.base_name, *self.loaded]
        if self.adapter_dir and self.adapter_dir.is_dir():
            for entry in sorted(self.adapter_dir.iterdir()):
                if entry.name not in names and self._in_folder(entry.name) is not None:
                    names.append(entry.name)
        return names

    async def resolve(self, model: str) -> str | None:
        """The adapter serving `model` (None for the base); loads it from the folder if needed, else 404."""
        if model == self.base_name:
            return None
        if model in self.loaded:
            return self.routes.get(model, model)
        path = self._in_folder(model)
        if path is None:
            raise APIError(
                404,
                f"The model '{model}' does not exist. Available models: {', '.join(self.names())} "
                "(GET /v1/models lists them).",
                param="model",
                code="model_not_found",
            )
        async with self._lock:
            if model not in self.loaded:
                future = self.engine.call(lambda: self._load(model, path))
                try:
                    await asyncio.wrap_future(future)
                except AdapterMismatchError as exc:  # found before loading: the message names the tensor
                    raise APIError(400, str(exc), param="model", code="adapter_load_failed") from None
                except Exception as exc:  # peft refused it while loading (the model is restored by _load)
                    raise APIError(
                        400, f"The adapter '{model}' cannot be loaded onto this server's base model: {exc}",
                        param="model", code="adapter_load_failed",
                    ) from None  # fmt: skip
        return model

    async def replace(self, name: str, path: Path) -> None:
        """Answer `name` with the adapter in `path` from now on (a promoted champion). The new adapter is loaded
        beside the old one on the engine thread and `name` is re-pointed once it is in: requests already decoding
        finish on the old weights, later ones get the new, none waits or fails."""
        if name not in self.loaded:
            raise APIError(404, f"No loaded adapter is named '{name}'.", param="model", code="model_not_found")
        try:
            check_adapter_folder(path)
        except ValueError as exc:
            raise APIError(409, str(exc), code="adapter_load_failed") from None
        async with self._lock:
            self._swaps += 1
            internal = f"{name}@{self._swaps}"
            try:
                await asyncio.wrap_future(self.engine.call(lambda: self._load(internal, path)))
            except Exception as exc:  # a mismatch found before loading, or peft's refusal (the model is restored)
                raise APIError(409, f"The adapter in '{path}' cannot replace '{name}': {exc}",
                               code="adapter_load_failed") from None  # fmt: skip
            del self.loaded[internal]
            self.loaded[name] = path
            self.routes[name] = internal

    def _in_folder(self, name: str) -> Path | None:
        if self.adapter_dir is None or not NAME.match(name) or ".." in name:
            return None
        path = (self.adapter_dir / name).resolve()
        if path.parent != self.adapter_dir:
            return None
        try:
            return check_adapter_folder(path)
        except ValueError:
            return None

    def _load(self, name: str, path: Path) -> None:
        # Runs on the engine thread: the model is never changed under a forward pass.
        model = self.engine.model
        check_adapter_fits(model, path, name)
        snapshot = ModuleSnapshot(model)
        try:
            with quiet_peft():
                if isinstance(model, PeftModel):
                    model.load_adapter(str(path), adapter_name=name)
                else:
                    wrapped = PeftModel.from_pretrained(model, str(path), adapter_name=name).eval()
        except Exception:
            if isinstance(model, PeftModel) and name in model.peft_config:
                with contextlib.suppress(Exception):  # peft's own bookkeeping first; the snapshot does the rest
                    model.delete_adapter(name)
            snapshot.restore()
            raise
        if not isinstance(model, PeftModel):
            self.engine.set_model(wrapped)
        self.loaded[name] = path
