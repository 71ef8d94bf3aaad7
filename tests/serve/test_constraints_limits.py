"""Constraint patterns that would hang or exhaust the server are refused, and do not hold up other requests.

A live server on loopback with the tiny model; compiles run in the server's real worker processes.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from tunelab.models.load import tokenizer_from_folder
from tunelab.serve.config import ServeConfig
from tunelab.serve.constraints import ConstraintBusyError, ConstraintCompiler, ConstraintTimeoutError
from tunelab.serve.pattern_limits import PatternLimitError, PatternLimits, check_repeats, repeat_counts
from tunelab.serve.server import build_state, serve_in_thread

CHAT = [{"role": "user", "content": "what is color of cat"}]
COMPILE_SECONDS = 2.0
# 2^N automaton states for N counted repeats after a repeated choice: N=16 already takes ~2 s on the tiny vocabulary
# (on a 49k one: 0.3 s at N=8, 3.6 s at N=12, 16 s at N=14); N=40 would need far more time and memory than anyone has.
HOSTILE = "[ab]*a[ab]{%d}"
LONG_STRING = {"type": "string", "maxLength": 999}  # outlines-core writes this as a repeat of 999


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ServeConfig(constraint_timeout=COMPILE_SECONDS, constraint_memory_mb=1024, constraint_workers=2)
    running = serve_in_thread(build_state(str(tiny_model_dir), config, dtype=torch.float32, name="tiny"))
    yield running
    running.stop()
    torch.set_num_threads(threads)


def _chat(**extra: object) -> dict:
    return {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0, **extra}


def _wait_for_idle_compiles(server, seconds: float = 30) -> None:
    # A compile whose requester left keeps its worker until it ends; later tests want both workers free.
    compiler = server.state.compiler()
    deadline = time.monotonic() + seconds
    while compiler._flights and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_hostile_pattern_is_refused_in_bounded_time_while_others_are_answered(server) -> None:
    url = f"{server.url}/v1/chat/completions"

    async def scenario() -> tuple[httpx.Response, float, list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=60) as client:
            started = time.monotonic()
            hostile = asyncio.create_task(client.post(url, json=_chat(regex=HOSTILE % 40)))
            await asyncio.sleep(0.3)  # its compile is under way in one worker
            others_started = time.monotonic()
            others = await asyncio.gather(
                client.post(url, json=_chat(regex="(cat|dog) is (red|blue)")),  # a new pattern: the other worker
                client.post(url, json=_chat()),  # no constraint at all
            )
            others_took = time.monotonic() - others_started
            answer = await hostile
            return answer, time.monotonic() - started, others, others_took

    answer, took, others, others_took = asyncio.run(scenario())
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "pattern_too_complex" and error["param"] == "regex"
    assert "--constraint-timeout" in error["message"] or "--constraint-memory-mb" in error["message"]
    assert took < COMPILE_SECONDS + 4  # killed at its limit, not left to run for weeks
    assert [r.status_code for r in others] == [200, 200], [r.text for r in others]
    assert others_took < COMPILE_SECONDS  # answered while the hostile compile was still running
    assert re.fullmatch(r"(cat|dog) is (red|blue)", others[0].json()["choices"][0]["message"]["content"])
    # The refusal is remembered: the same pattern again is answered at once, without another compile.
    compiler = server.state.compiler()
    before = compiler.compiles
    again_started = time.monotonic()
    again = httpx.post(url, json=_chat(regex=HOSTILE % 40), timeout=60)
    assert again.status_code == 400 and time.monotonic() - again_started < 1
    assert compiler.compiles == before


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"regex": "a{5000}"}, ["5000 times", "limit is 256", "--max-pattern-repeat"]),
        ({"regex": "(ab{20}){20}"}, ["multiply to 400", "limit is 256", "--max-pattern-repeat"]),
        ({"regex": "a" * 10_001}, ["10001 characters", "limit is 10000", "--max-pattern-chars"]),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": LONG_STRING}}},
            ["999 times", "limit is 256", "--max-pattern-repeat", "maxLength"],
        ),
    ],
)
def test_patterns_over_the_static_limits_are_400s_naming_the_limit(server, extra: dict, named: list[str]) -> None:
    compiler = server.state.compiler()
    before = compiler.compiles
    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(**extra), timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "pattern_too_complex" and error["type"] == "invalid_request_error"
    assert error["param"] == ("regex" if "regex" in extra else "response_format")
    for part in named:
        assert part in error["message"]
    assert time.monotonic() - started < 2
    # A regex over the limits never reaches a worker; a schema's regex is checked there, before compiling.
    assert compiler.compiles == before + (0 if "regex" in extra else 1)


def test_two_requests_for_one_new_pattern_share_one_compile(server) -> None:
    _wait_for_idle_compiles(server)
    compiler = server.state.compiler()
    before = compiler.compiles
    pattern = "[ab]*a[ab]{14}"  # new, and slow enough (~0.4 s here) that both requests wait on the same compile
    url = f"{server.url}/v1/completions"
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 6, "temperature": 0, "regex": pattern}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(client.post(url, json=body), client.post(url, json={**body, "seed": 1}))

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert compiler.compiles == before + 1
    for response in responses:  # output so far is a prefix of the language: only a and b
        assert re.fullmatch(r"[ab]*", response.json()["choices"][0]["text"])


def test_a_constrained_request_still_matches_its_pattern(server) -> None:
    pattern = r"(yes|no), (one|two|three) (cat|dog)s?"
    for seed in range(3):
        body = _chat(regex=pattern, temperature=1.0, seed=seed, max_tokens=20)
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert re.fullmatch(pattern, choice["message"]["content"]) and choice["finish_reason"] == "stop"


def test_compile_time_counts_against_the_request_deadline(server) -> None:
    _wait_for_idle_compiles(server)
    config = server.state.config
    config.request_timeout, saved = 0.5, config.request_timeout
    try:
        started = time.monotonic()
        response = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(regex=HOSTILE % 41), timeout=60)
        took = time.monotonic() - started
    finally:
        config.request_timeout = saved
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout_error"
    assert took < COMPILE_SECONDS  # the request's 0.5 s, not the compile's own limit
    _wait_for_idle_compiles(server)
    assert httpx.post(f"{server.url}/v1/chat/completions", json=_chat(), timeout=60).status_code == 200


def test_waiting_requests_are_bounded_and_abandoned_compiles_are_skipped(tiny_model_dir: Path) -> None:
    tokenizer = tokenizer_from_folder(tiny_model_dir)
    config = ServeConfig(constraint_timeout=1.0, constraint_workers=1)
    compiler = ConstraintCompiler(tokenizer, tokenizer.eos_token_id, config)
    try:
        deadline = time.monotonic() + 0.5
        with ThreadPoolExecutor(8) as pool:  # 8 waiters per worker fill the waiting room
            waits = [pool.submit(compiler.regex, HOSTILE % (30 + i), deadline) for i in range(8)]
            time.sleep(0.2)
            with pytest.raises(ConstraintBusyError, match="retry after a short wait") as busy:
                compiler.regex("(yes|no)", deadline)
            assert busy.value.status == 429
            for wait in waits:
                with pytest.raises(ConstraintTimeoutError):
                    wait.result()
        # The first compile ran to its limit; the seven queued behind it lost their waiters and were skipped.
        finish = time.monotonic() + 10
        while compiler._flights and time.monotonic() < finish:
            time.sleep(0.05)
        assert compiler.compiles == 1
        assert re.fullmatch("yes|no", "".join(_walk(compiler.regex("(yes|no)"), tokenizer)))
    finally:
        compiler.close()


def test_stopping_the_server_ends_its_compile_workers(tiny_model_dir: Path) -> None:
    running = serve_in_thread(build_state(str(tiny_model_dir), ServeConfig(constraint_workers=1), name="tiny"))
    try:
        answer = httpx.post(f"{running.url}/v1/chat/completions", json=_chat(regex="(yes|no)"), timeout=60)
        assert answer.status_code == 200, answer.text
        pool = running.state.compiler()._pool
        assert pool is not None
        processes = [worker.process for worker in pool._workers]
    finally:
        running.stop()
    assert all(process.poll() is not None for process in processes)


@pytest.mark.parametrize(
    ("pattern", "counts"),
    [
        (r"(yes|no)( [0-9]{1,3})?", (3, 3)),
        (r"(a{10}){30}", (30, 300)),
        (r"(?:x{4}|y{7})+z{2,}", (7, 7)),
        (r"\p{L}{300}", (300, 300)),  # Rust-only syntax: the counts are read off the text
    ],
)
def test_repeat_counts(pattern: str, counts: tuple[int, int]) -> None:
    assert repeat_counts(pattern) == counts


def test_deeply_nested_groups_are_refused_without_a_traceback() -> None:
    with pytest.raises(PatternLimitError, match="nests groups too deeply"):
        check_repeats("(" * 5000 + "a" + ")" * 5000, PatternLimits(), "regex")


def _walk(constraint, tokenizer) -> list[str]:
    # Follow the first allowed token until the pattern is complete: the compiled index works in this process.
    pieces = []
    while not constraint.is_finished():
        token = min(t for t in constraint.allowed() if t != tokenizer.eos_token_id)
        pieces.append(tokenizer.decode([token]))
        constraint.advance(token)
        if len(pieces) > 10:
            break
    return pieces
