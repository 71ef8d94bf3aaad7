"""`tunelab chat --url` talks to a running server; `tunelab serve` refuses an open bind without a key."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tunelab.cli.main import main
from tunelab.core.types import Message
from tunelab.serve import server as server_module
from tunelab.serve.client import RemoteError, stream_remote_reply
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, free_port, serve_in_thread


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    running = serve_in_thread(build_state(str(tiny_model_dir), ServeConfig(api_keys=["k"]), dtype=torch.float32))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def test_remote_reply_streams_the_servers_answer(server, tiny_model_dir: Path) -> None:
    name = tiny_model_dir.resolve().name
    hi = [Message("user", "hi")]
    pieces = list(stream_remote_reply(server.url, name, hi, max_tokens=6, temperature=0, api_key="k"))
    assert pieces and all(isinstance(p, str) for p in pieces)
    again = "".join(stream_remote_reply(server.url, name, hi, max_tokens=6, temperature=0, api_key="k"))
    assert "".join(pieces) == again
    with pytest.raises(RemoteError, match="answered 401"):
        list(stream_remote_reply(server.url, name, [Message("user", "hi")], api_key="wrong"))
    with pytest.raises(RemoteError, match="Cannot reach"):
        list(stream_remote_reply(f"http://127.0.0.1:{free_port()}", name, [Message("user", "hi")]))


def test_chat_cli_with_url(server, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("what is color of cat\n\n"))
    name = tiny_model_dir.resolve().name
    args = ["chat", name, "--url", server.url, "--api-key", "k", "--max-new-tokens", "4", "--temperature", "0"]
    assert main(args) == 0
    assert "model>" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n\n"))
    assert main(["chat", "nope", "--url", server.url, "--api-key", "k"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_refuses_a_public_bind_without_a_key(tiny_model_dir: Path, capsys) -> None:
    assert main(["serve", str(tiny_model_dir), "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_served_weights_are_bf16_only_where_the_device_computes_it_fast(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool
) -> None:
    # On a CPU without AVX512-BF16 or AMX a bf16 matmul runs hundreds of times slower than fp32.
    monkeypatch.setattr(server_module, "use_bf16", lambda precision, device: precision == "auto" and fast_bf16)
    state = build_state(str(tiny_model_dir), ServeConfig(), device="cpu")
    try:
        assert state.engine is not None
        assert next(state.engine.model.parameters()).dtype == (torch.bfloat16 if fast_bf16 else torch.float32)
    finally:
        state.engine.stop()
    pinned = build_state(str(tiny_model_dir), ServeConfig(), device="cpu", dtype=torch.float32)
    assert pinned.engine is not None and next(pinned.engine.model.parameters()).dtype == torch.float32
    pinned.engine.stop()
