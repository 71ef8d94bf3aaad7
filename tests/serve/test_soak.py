"""A short soak: 20 clients for 12 s mixing valid, invalid, streaming, cancelled and oversized requests.

Uses the load generator of `benchmarks/serve_soak.py` (which checks each answer) against the tiny model; the
benchmark itself runs 50 clients for minutes on the embedded model (results in benchmarks/results/serve_soak.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, serve_in_thread

BENCH = ROOT / "benchmarks" / "serve_soak.py"


def _load_soak():
    spec = importlib.util.spec_from_file_location("serve_soak", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ServeConfig(max_batch_size=32, max_queue=128, max_body_bytes=50_000, max_tokens_limit=64)
    running = serve_in_thread(build_state(str(tiny_model_dir), config, dtype=torch.float32, name="tiny"))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def test_short_soak_no_5xx_every_valid_answer_and_the_queue_drains(server) -> None:
    soak = _load_soak()
    result = asyncio.run(
        soak.run_soak(
            server.url, "tiny", clients=20, seconds=12, max_tokens=8, max_body_bytes=50_000, context_tokens=256
        )
    )
    assert result.server_errors == 0, result.statuses
    assert result.problems == []
    assert result.valid_sent > 40 and result.valid_answered == result.valid_sent
    kinds = {kind for kind, _ in result.statuses}
    assert kinds == set(soak.KINDS)  # every kind of request was sent
    assert result.drain_seconds < 5
    engine = server.state.engine
    assert engine.alive and engine.queue_depth == 0 and engine.active_count == 0
