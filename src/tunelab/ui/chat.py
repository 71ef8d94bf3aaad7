"""The chat playground: a run's trained model answering, streamed, through the same engine and request path as
`tunelab serve` (its `build_state`, chat template, `build_specs` limits and server-sent events).

One run's model is loaded at a time, the last one asked for: a dashboard browsing many runs would otherwise hold
every model it ever chatted with in memory. The model is the run's result as `tunelab serve RUN` serves it (a LoRA
run: the base plus the run's adapter, under the run's name), or, on request, the base model alone, which shows
what the training changed.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from tunelab.serve.app import ServerState
from tunelab.serve.config import ServeConfig
from tunelab.serve.generation import Job, build_specs, chat_prompt, stream
from tunelab.serve.protocol import ChatCompletionRequest
from tunelab.serve.server import build_state

MAX_TOKENS = 512
"""The most tokens one playground answer may ask for."""


class ChatPlayground:
    """The loaded run (at most one) and its engine."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self.config = ServeConfig(max_tokens_limit=max_tokens)
        self._lock = threading.Lock()
        self._run: Path | None = None
        self._state: ServerState | None = None

    def state_for(self, run_dir: Path) -> ServerState:
        """The server state of `run_dir`'s model, loading it (and dropping the previous run's) when needed."""
        with self._lock:
            if self._run != run_dir or self._state is None:
                self.close_locked()
                self._state = build_state(str(run_dir), self.config, name=run_dir.name)
                self._run = run_dir
            return self._state

    def close_locked(self) -> None:
        if self._state is not None:
            self._state.close()
        self._state, self._run = None, None

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    async def answer(
        self, run_dir: Path, messages: list[dict[str, Any]], max_tokens: int, temperature: float, base: bool = False
    ) -> AsyncIterator[str]:
        """Server-sent events of the answer (OpenAI chat chunks, then `[DONE]`); `base`: the base model answers."""
        state = await anyio.to_thread.run_sync(self.state_for, run_dir)
        assert state.engine is not None and state.adapters is not None
        names = state.generator_names()
        model = names[0] if base or run_dir.name not in names else run_dir.name
        body = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, "stream": True}
        )
        engine = state.engine
        adapter = await state.adapters.resolve(model)
        prompt = await anyio.to_thread.run_sync(chat_prompt, engine.tokenizer, body)
        specs = build_specs(body, [prompt], engine.tokenizer, state.config, engine.context_length, state.compiler,
                            adapter)  # fmt: skip
        return await stream(engine, Job("chat.completion", model, len(prompt), specs), state.config, include_usage=True)
