from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.postgres import postgres_server
from tests.tiny import build_tiny_llama

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a ChatML tokenizer, saved once per test session."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Converted-model caches go to a per-session folder unless the caller set TUNELAB_HOME (CI shares one).
    if "TUNELAB_HOME" not in os.environ:
        monkeypatch.setenv("TUNELAB_HOME", str(tmp_path_factory.getbasetemp() / "home"))


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server on a free loopback port with a database `studies`; its SQLAlchemy URL."""
    with postgres_server() as url:
        yield url
