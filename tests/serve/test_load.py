"""50 concurrent clients for a few seconds against a live server: no errors, every response well-formed.

Uses the load generator of `benchmarks/serve_load.py` (which checks each response) against the tiny model.
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

BENCH = ROOT / "benchmarks" / "serve_load.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ServeConfig(max_batch_size=32, max_queue=128)
    running = serve_in_thread(build_state(str(tiny_model_dir), config, dtype=torch.float32, name="tiny"))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def test_fifty_concurrent_clients_get_well_formed_answers(server) -> None:
    load = _load_generator()
    result = asyncio.run(load.run_load(server.url, "tiny", clients=50, seconds=3, max_tokens=16, name="test"))
    assert result.errors == []
    assert result.requests >= 50  # every client finished at least one request
    metrics = server.state.metrics
    assert metrics.batch_size.collect()[0].samples  # decode steps ran, and batched: mean rows per step above 1
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples if not s.labels.get("le")}
    assert samples["tunelab_batch_size_sum"] / samples["tunelab_batch_size_count"] > 2
