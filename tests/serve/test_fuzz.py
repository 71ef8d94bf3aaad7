"""Fuzzing the HTTP API: requests generated from the server's own OpenAPI document (schemathesis) and from
hypothesis strategies over JSON and over the request models' fields. Whatever arrives: no 5xx, no hang, and
every error in OpenAI's format.

Examples are derandomised (the same ones every run) and counted, so the whole file takes well under a minute.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers import AutoTokenizer

from tunelab.serve.config import ServeConfig
from tunelab.serve.errors import APIError
from tunelab.serve.generation import build_specs, completion_prompts
from tunelab.serve.protocol import ChatCompletionRequest, CompletionRequest
from tunelab.serve.server import build_state, serve_in_thread

SLOWEST = 20.0  # seconds: far above any answer of this configuration, far below a hang
FUZZ = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Small limits keep every valid request short; the embedding model puts /v1/embeddings under fuzz as well.
    config = ServeConfig(max_tokens_limit=8, default_max_tokens=4, max_queue=64, request_timeout=15, body_timeout=5)
    state = build_state(str(tiny_model_dir), config, dtype=torch.float32, name="tiny", embedding_model="minilm-l6")
    running = serve_in_thread(state)
    yield running
    running.stop()
    torch.set_num_threads(threads)


def check_answer(status: int, content: bytes, seconds: float, what: str) -> None:
    assert seconds < SLOWEST, f"{what}: {seconds:.1f}s"
    assert status < 500, f"{what}: {status} {content[:300]!r}"
    if status >= 400:
        body = json.loads(content)
        assert set(body) == {"error"}, body
        error = body["error"]
        assert {"message", "type", "param", "code"} <= set(error) and isinstance(error["message"], str), body
        assert "Traceback" not in error["message"] and "/site-packages/" not in error["message"], body


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_schema_driven_requests_get_no_5xx(server, mode: schemathesis.GenerationMode) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} <= set(document["paths"])
    schema = schemathesis.openapi.from_dict(document)
    statuses: list[int] = []

    @FUZZ
    @given(case=schema.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        if mode == schemathesis.GenerationMode.POSITIVE and isinstance(case.body, dict):
            # A model that exists: any other name is a quick 404, and the fuzz is meant to reach generation.
            case.body["model"] = "minilm-l6" if case.path == "/v1/embeddings" else "tiny"
        started = time.monotonic()
        response = case.call(base_url=server.url, timeout=SLOWEST + 5)
        check_answer(response.status_code, response.content, time.monotonic() - started, f"{case.method} {case.path}")
        statuses.append(response.status_code)

    one()
    assert server.state.engine.alive
    if mode == schemathesis.GenerationMode.POSITIVE:  # the fuzz reached generation, not only validation
        assert statuses.count(200) >= 5, statuses


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "developer", "user", "assistant"])
WORDS = st.text(max_size=12)
TOKEN = st.integers(0, 299)  # the tiny vocabulary


def mostly(valid: st.SearchStrategy[Any], edge: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    """`valid` three times in four; otherwise an edge value or any JSON value, so that enough requests are valid
    to reach generation and the rest probe validation."""
    hostile = JSON if edge is None else edge | JSON
    return st.tuples(st.booleans(), st.booleans()).flatmap(lambda bad: hostile if all(bad) else valid)


MESSAGES = st.lists(st.fixed_dictionaries({"role": mostly(ROLES), "content": mostly(WORDS)}), min_size=1, max_size=3)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": mostly(st.integers(1, 8), st.integers(-5, 2**70)),
    "temperature": mostly(st.floats(0, 2), st.floats()),
    "top_p": mostly(st.floats(0.01, 1), st.floats()),
    "n": mostly(st.integers(1, 3), st.integers(-2, 40)),
    "seed": mostly(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70)),
    "stop": mostly(st.lists(st.text(min_size=1, max_size=5), max_size=4), st.lists(st.text(max_size=600))),
    "logit_bias": mostly(st.dictionaries(TOKEN.map(str), st.floats(-100, 100), max_size=4), st.text(max_size=14)),
    "banned_words": mostly(st.lists(WORDS, max_size=6)),
    "stream": mostly(st.booleans()),
    "stream_options": mostly(st.just({"include_usage": True})),
    "regex": mostly(st.sampled_from(["(yes|no)", "[0-9]{1,3}"]), st.sampled_from(["(", "a{100000}", ""])),
    "response_format": mostly(
        st.sampled_from(
            [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}]
        )
    ),
    "logprobs": mostly(st.just(False), st.just(True)),
    "echo": mostly(st.just(False), st.just(True)),
}
PROMPTS = WORDS | st.lists(st.integers(-3, 400), max_size=6) | st.lists(st.lists(TOKEN, max_size=5), max_size=3)


def bodies(route: str) -> st.SearchStrategy[dict[str, Any]]:
    """Request bodies shaped like the route's, with hostile values in any field."""
    base = {"model": mostly(st.sampled_from(["minilm-l6"] if route == "/v1/embeddings" else ["tiny"]))}
    if route == "/v1/chat/completions":
        base["messages"] = mostly(MESSAGES)
    elif route == "/v1/completions":
        base["prompt"] = mostly(PROMPTS)
    else:
        base["input"] = mostly(PROMPTS)
    return st.fixed_dictionaries(base, optional=FIELDS)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_hostile_bodies_get_no_5xx(server, route: str) -> None:
    statuses: list[int] = []
    with httpx.Client(base_url=server.url, timeout=SLOWEST + 5) as client:

        @FUZZ
        @given(body=bodies(route) | JSON)
        def one(body: Any) -> None:
            # allow_nan: Python's json reads NaN and Infinity, so a client can send them.
            content = json.dumps(body, allow_nan=True).encode()
            started = time.monotonic()
            response = client.post(route, content=content, headers={"Content-Type": "application/json"})
            if response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream"):
                assert response.text.rstrip().endswith("data: [DONE]")
            check_answer(response.status_code, response.content, time.monotonic() - started, json.dumps(body)[:200])
            statuses.append(response.status_code)

        one()
    assert server.state.engine.alive and server.state.engine.queue_depth == 0
    assert len(statuses) >= 30 and 200 in statuses, statuses


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def no_compiler() -> Any:
    raise AssertionError("a request without a pattern needs no constraint compiler")


@FUZZ
@given(body=bodies("/v1/completions"))
def test_a_valid_completion_request_builds_its_sequences_or_is_an_api_error(tokenizer, body: dict) -> None:
    """The property under the HTTP layer: whatever passes validation either becomes sequences the engine can
    run or is refused with an APIError (4xx), never another exception."""
    try:
        request = CompletionRequest.model_validate({**body, "regex": None})  # patterns: the HTTP fuzz above
    except ValidationError:
        return
    config = ServeConfig(max_tokens_limit=64)
    try:
        prompts = completion_prompts(tokenizer, request)
        specs = build_specs(request, prompts, tokenizer, config, 256, no_compiler, None)
    except APIError as exc:
        assert 400 <= exc.status < 500, exc.message
        return
    assert len(specs) == len(prompts) * request.n and all(s.prompt for s in specs)
    for spec in specs:
        assert 1 <= spec.params.max_tokens <= 64 and 0 <= spec.params.temperature <= 2
        assert math.isfinite(spec.params.top_p) and all(s for s in spec.params.stop)


@FUZZ
@given(body=bodies("/v1/chat/completions"))
def test_chat_requests_validate_or_fail_with_a_located_message(body: dict) -> None:
    try:
        ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] is not None
