"""Build a server from a model spec and run it: with uvicorn in the foreground (`tunelab serve`) or in a
background thread (tests, benchmarks, `tunelab chat --url` demos)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn

from tunelab.core.device import use_bf16
from tunelab.core.errors import TunelabError
from tunelab.models.int8 import quantize_int8_
from tunelab.serve.adapters import Adapters
from tunelab.serve.app import ServerState, create_app
from tunelab.serve.config import ServeConfig
from tunelab.serve.embeddings import Embedder
from tunelab.serve.engine import Engine
from tunelab.serve.loading import load_served
from tunelab.serve.metrics import ServerMetrics
from tunelab.serve.promotion import champion_adapter
from tunelab.serve.traffic import LogSettings, TrafficLog


class ServeError(TunelabError):
    """The server cannot start as asked (bad adapter, embedding model that is not an encoder, ...)."""


def build_state(
    spec: str,
    config: ServeConfig | None = None,
    *,
    adapters: dict[str, Path] | None = None,
    adapter_dir: Path | None = None,
    embedding_model: str | None = None,
    dtype: torch.dtype | None = None,
    int8: bool = False,
    trust_remote_code: bool = False,
    name: str | None = None,
    device: str | None = None,
    log: LogSettings | None = None,
    champion: Path | None = None,
) -> ServerState:
    """Load `spec` (and an optional embedding model) and start its engine; the result feeds `create_app`.

    `device`: "cpu", "cuda", ... (default: cuda when available and not `int8`, which is a CPU format).
    `dtype`: the weights' dtype; default bf16 where the device has fast bf16 matmuls (recent GPUs, CPUs with
    AVX512-BF16 or AMX), else fp32: on a CPU without them a bf16 matmul runs hundreds of times slower than fp32.
    `log`: where and how answers and feedback are logged (None: not at all).
    `champion`: a champion pointer (`tunelab retrain`): a LoRA run is served with the promoted adapter when one
    is, and POST /v1/admin/reload swaps in a later one.
    """
    device = device or ("cuda" if torch.cuda.is_available() and not int8 else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if use_bf16("auto", torch.device(device)) and not int8 else torch.float32
    config = config or ServeConfig()
    state = ServerState(config=config, metrics=ServerMetrics())
    if log is not None:  # first: a database URL that cannot work is refused before any model loads
        state.traffic = TrafficLog(log, state.metrics)
    served = load_served(spec, dtype=dtype, trust_remote_code=trust_remote_code, name=name)
    if served.task == "encoder":
        if adapters or adapter_dir:
            raise ServeError(f"'{spec}' is an encoder (embeddings only); adapters are served on causal LMs.")
        state.embedder, state.embedding_name = Embedder(served.model.to(device), served.tokenizer), served.name
        return state
    model = served.model.to(device)
    if int8:
        model = quantize_int8_(model)
    engine = Engine(
        model, served.tokenizer, max_batch_size=config.max_batch_size, max_queue=config.max_queue, metrics=state.metrics
    ).start()
    state.engine = engine
    state.adapters = Adapters(engine, served.name, adapter_dir)
    if champion is not None and served.adapters:
        state.champion, state.champion_name = champion, next(iter(served.adapters))
        promoted = champion_adapter(champion)
        if promoted is not None:
            served.adapters[state.champion_name] = promoted
    for adapter_name, path in {**served.adapters, **(adapters or {})}.items():
        try:
            state.adapters.add_now(adapter_name, Path(path))
        except ValueError as exc:
            engine.stop()
            raise ServeError(f"Cannot serve adapter '{adapter_name}': {exc}") from None
    if embedding_model:
        extra = load_served(embedding_model, dtype=torch.float32, trust_remote_code=trust_remote_code)
        if extra.task != "encoder":
            raise ServeError(f"--embedding-model '{embedding_model}' is not an encoder; give one such as minilm-l6.")
        state.embedder, state.embedding_name = Embedder(extra.model.to(device), extra.tokenizer), extra.name
    if state.traffic is not None:
        state.traffic.start()
    return state


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    """A server running in a background thread; `stop()` shuts it down, its engine and its compile workers."""

    url: str
    state: ServerState
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.state.close()


def uvicorn_config(state: ServerState, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for `state`: past `max_connections` connections or requests in flight, uvicorn itself
    answers 503 (so a flood of idle connections cannot take every socket and thread)."""
    return uvicorn.Config(
        create_app(state), host=host, port=port, log_level=log_level, timeout_keep_alive=30,
        limit_concurrency=state.config.max_connections,
    )  # fmt: skip


def serve_in_thread(state: ServerState, host: str = "127.0.0.1", port: int | None = None) -> RunningServer:
    """Start uvicorn for `state` in a daemon thread and wait until it accepts connections."""
    port = port or free_port(host)
    config = uvicorn_config(state, host, port, "warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tunelab-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    return RunningServer(f"http://{host}:{port}", state, server, thread)


def serve_forever(state: ServerState, host: str, port: int) -> None:
    """Run uvicorn in the foreground until Ctrl-C."""
    try:
        uvicorn.Server(uvicorn_config(state, host, port, "info")).run()
    finally:
        state.close()
