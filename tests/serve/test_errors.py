"""Malformed and abusive requests each get the right status and an OpenAI-style error body; the server stays up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch

from tunelab.serve.config import ServeConfig
from tunelab.serve.server import build_state, serve_in_thread

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ServeConfig(api_keys=[KEY], max_body_bytes=20_000, max_tokens_limit=64, max_batch_size=4, max_queue=8)
    running = serve_in_thread(build_state(str(tiny_model_dir), config, dtype=torch.float32, name="tiny"))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


def _post(server, payload: object = CHAT, *, content: bytes | None = None, headers: dict | None = None):
    url = f"{server.url}/v1/chat/completions"
    if content is not None:
        return httpx.post(url, content=content, headers={**AUTH, "Content-Type": "application/json", **(headers or {})})
    return httpx.post(url, json=payload, headers={**AUTH, **(headers or {})})


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({**CHAT, "messages": "hi"}, 400, "messages"),
        ({**CHAT, "max_tokens": "many"}, 400, "max_tokens"),
        ({**CHAT, "temperature": 5}, 400, "temperature"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({**CHAT, "model": "gpt-9"}, 404, "model"),
        ({**CHAT, "max_tokens": 10_000}, 400, "max_tokens"),
        ({**CHAT, "logit_bias": {"99999": 5}}, 400, "logit_bias"),
        ({**CHAT, "logprobs": True}, 400, "logprobs"),
        ({**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "response_format"),
        ({**CHAT, "regex": "(unclosed"}, 400, "regex"),
        ({"messages": CHAT["messages"]}, 400, "model"),
        ([1, 2, 3], 400, None),
    ],
)
def test_bad_requests_get_openai_errors(server, payload: object, status: int, param: str | None) -> None:
    error = _error(_post(server, payload), status)
    assert error["param"] == param
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_bad_json_huge_body_and_prompt_past_the_context(server) -> None:
    assert _error(_post(server, content=b'{"model": "tiny", '), 400)["code"] == "invalid_json"
    huge = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"a" * 50_000 + b'"}]}'
    assert _error(_post(server, content=huge), 413)["code"] == "body_too_large"
    context = {**CHAT, "messages": [{"role": "user", "content": "cat " * 300}], "max_tokens": 8}
    assert _error(_post(server, context), 400)["code"] == "context_length_exceeded"


def test_api_keys(server) -> None:
    assert _error(httpx.post(f"{server.url}/v1/chat/completions", json=CHAT), 401)["type"] == "authentication_error"
    wrong = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
    assert "Invalid API key" in _error(wrong, 401)["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).models.list()
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list()] == ["tiny"]
    assert httpx.get(f"{server.url}/health").status_code == 200  # health stays open for load balancers


def test_unknown_route_and_method(server) -> None:
    assert _error(httpx.get(f"{server.url}/v1/nothing", headers=AUTH), 404)["type"] == "not_found_error"
    assert _error(httpx.get(f"{server.url}/v1/chat/completions", headers=AUTH), 405)


def test_full_queue_answers_429_and_the_server_recovers(server) -> None:
    engine = server.state.engine
    engine.max_queue, saved = 1, engine.max_queue
    try:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                payload = {**CHAT, "max_tokens": 60, "temperature": 0, "logit_bias": {"5": 100}}
                url = f"{server.url}/v1/chat/completions"
                calls = [client.post(url, json=payload, headers=AUTH) for _ in range(12)]
                return await asyncio.gather(*calls)

        responses = asyncio.run(burst())
    finally:
        engine.max_queue = saved
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    error = _error(next(r for r in responses if r.status_code == 429), 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
    assert all(r.json()["choices"][0]["finish_reason"] == "length" for r in responses if r.status_code == 200)
    assert _post(server).status_code == 200


def test_timeout_answers_504(server) -> None:
    config = server.state.config
    config.request_timeout, saved = 0.02, config.request_timeout
    try:
        payload = {**CHAT, "max_tokens": 64, "logit_bias": {"5": 100}}
        error = _error(_post(server, payload), 504)
    finally:
        config.request_timeout = saved
    assert error["type"] == "timeout_error"
    assert _post(server).status_code == 200
