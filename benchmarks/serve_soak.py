"""Soak test for `tunelab serve`: many concurrent clients for minutes, mixing valid, invalid, streaming,
cancelled and oversized requests, on 127.0.0.1 only.

What must hold (the exit status is 1 otherwise):

- no 5xx answer, for any kind of request;
- every valid request is answered, well-formed (status 200, text, finish_reason, usage adding up; streams end
  with [DONE] and carry no error event);
- every invalid or oversized request gets its 4xx in OpenAI's error format;
- once the clients stop, the engine drains: nothing queued, no row decoding (GET /health).

Reported: latency p50/p99 of the valid requests, counts by kind and status, the server's resident memory
(sampled every 2 s; growth from the end of the warm-up to the end), and the time to drain. The server runs as a
subprocess, so its memory is its own. Writes benchmarks/results/serve_soak.md.

    .venv/bin/python benchmarks/serve_soak.py --model smollm2-135m --clients 50 --seconds 180
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import psutil

PROMPTS = ["Write one sentence about the sea.", "Name three colours.", "What is 12 times 7?", "Describe a cat."]
KINDS = {"chat": 35, "stream": 20, "completion": 10, "invalid": 15, "cancelled": 12, "oversized": 8}
VALID = ("chat", "stream", "completion")


@dataclass
class SoakResult:
    clients: int
    seconds: float
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count; status 0: client-side close
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in VALID})
    valid_sent: int = 0
    valid_answered: int = 0
    problems: list[str] = field(default_factory=list)
    drain_seconds: float = float("nan")

    @property
    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    def percentile(self, q: float, kinds: tuple[str, ...] = VALID) -> float:
        values = sorted(v for k in kinds for v in self.latencies[k])
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def _invalid_requests(model: str) -> list[tuple[str, dict, int]]:
    """(what, httpx request arguments, expected status): each a mistake a client can make."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body = json.dumps(chat)
    as_json = {"Content-Type": "application/json"}
    return [
        ("bad JSON", {"content": body[:-3], "headers": as_json}, 400),
        ("text/plain body", {"content": body, "headers": {"Content-Type": "text/plain"}}, 415),
        ("empty prompt [[]]", {"json": {"model": model, "prompt": [[]]}, "path": "/v1/completions"}, 400),
        ("empty messages", {"json": {**chat, "messages": []}}, 400),
        ("unknown model", {"json": {**chat, "model": "gpt-9"}}, 404),
        ("seed out of range", {"json": {**chat, "seed": 2**64, "n": 2}}, 400),
        ("temperature 5", {"json": {**chat, "temperature": 5}}, 400),
        ("too many banned words", {"json": {**chat, "banned_words": [f"w{i}" for i in range(300)]}}, 400),
        ("logit_bias key '²'", {"json": {**chat, "logit_bias": {"²": 1}}}, 400),
        ("max_tokens 10^6", {"json": {**chat, "max_tokens": 10**6}}, 400),
        ("wrong type", {"json": {**chat, "messages": "hi"}}, 400),
    ]


def _check_error(response: httpx.Response, status: int) -> str | None:
    if response.status_code != status:
        return f"expected {status}, got {response.status_code}: {response.text[:200]}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without an OpenAI error body: {response.text[:200]}"
    if not {"message", "type", "param", "code"} <= set(error):
        return f"{status} error body lacks fields: {error}"
    return None


def _check_completion(data: dict, kind: str, choices: int) -> str | None:
    got = data.get("choices") or []
    if len(got) != choices:
        return f"{kind}: {len(got)} choices, wanted {choices}"
    for choice in got:
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        if not isinstance(text, str) or choice["finish_reason"] not in ("stop", "length"):
            return f"{kind}: malformed choice {choice}"
    usage = data["usage"]
    if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        return f"{kind}: usage does not add up: {usage}"
    return None


async def run_soak(
    url: str, model: str, *, clients: int, seconds: float, max_tokens: int, max_body_bytes: int,
    context_tokens: int, seed: int = 0,
) -> SoakResult:  # fmt: skip
    """`clients` concurrent loops for `seconds`, each picking its next request kind at random (seeded)."""
    result = SoakResult(clients, seconds)
    invalid = _invalid_requests(model)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)
    kinds, weights = list(KINDS), list(KINDS.values())

    async def one(client: httpx.AsyncClient, rng: random.Random, kind: str) -> tuple[int, str | None]:
        prompt = rng.choice(PROMPTS)
        messages = [{"role": "user", "content": prompt}]
        chat = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.7,
                "seed": rng.randrange(2**63)}  # fmt: skip
        if kind == "chat":
            response = await client.post("/v1/chat/completions", json=chat)
            if response.status_code != 200:
                return response.status_code, f"chat: {response.status_code} {response.text[:200]}"
            return 200, _check_completion(response.json(), "chat", 1)
        if kind == "completion":
            body = {"model": model, "prompt": [prompt, prompt[::-1]], "max_tokens": max_tokens}
            response = await client.post("/v1/completions", json=body)
            if response.status_code != 200:
                return response.status_code, f"completion: {response.status_code} {response.text[:200]}"
            return 200, _check_completion(response.json(), "completion", 2)
        if kind == "stream":
            body = {**chat, "stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return response.status_code, f"stream: {response.status_code} {response.text[:200]}"
                lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            if not lines or lines[-1] != "data: [DONE]":
                return 200, f"stream: did not end with [DONE] ({lines[-1:]})"
            chunks = [json.loads(line[6:]) for line in lines[:-1]]
            if any("error" in c for c in chunks):
                return 200, f"stream: error event {next(c for c in chunks if 'error' in c)}"
            if not chunks[-1].get("usage"):
                return 200, "stream: no usage chunk"
            return 200, None
        if kind == "invalid":
            what, request, status = rng.choice(invalid)
            request = dict(request)
            response = await client.post(request.pop("path", "/v1/chat/completions"), **request)
            problem = _check_error(response, status)
            return response.status_code, problem and f"invalid ({what}): {problem}"
        if kind == "oversized":
            if rng.random() < 0.5:  # past the body limit: refused from its Content-Length, before it is read
                body = json.dumps({**chat, "messages": [{"role": "user", "content": "a" * max_body_bytes}]})
                response = await client.post(
                    "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
                )
                problem = _check_error(response, 413)
            else:  # within the body limit, past the model's context
                long = {**chat, "messages": [{"role": "user", "content": "cat " * (context_tokens + 100)}]}
                response = await client.post("/v1/chat/completions", json=long)
                problem = _check_error(response, 400)
            return response.status_code, problem and f"oversized: {problem}"
        # cancelled: the client goes away mid-answer (a stream after its first chunk, or a plain request early)
        if rng.random() < 0.5:
            async with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as response:
                async for _ in response.aiter_lines():
                    break
                return response.status_code, None
        try:
            response = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat), timeout=0.2)
        except TimeoutError:
            return 0, None
        return response.status_code, _check_completion(response.json(), "chat", 1)

    async def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                started = time.monotonic()
                try:
                    status, problem = await one(client, rng, kind)
                except Exception as exc:  # a transport failure is a finding too
                    status, problem = -1, f"{kind}: {type(exc).__name__}: {exc}"[:300]
                result.statuses[(kind, status)] += 1
                if kind in VALID:
                    result.valid_sent += 1
                    if status == 200 and problem is None:
                        result.valid_answered += 1
                        result.latencies[kind].append(time.monotonic() - started)
                if problem:
                    result.problems.append(problem)

    began = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    result.seconds = time.monotonic() - began
    result.drain_seconds = await drain(url)
    return result


async def drain(url: str, timeout: float = 30) -> float:
    """Seconds until the server reports nothing queued and no row decoding (inf if it never does)."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() - started < timeout:
            health = (await client.get("/health")).json()
            if health.get("queue_depth") == 0 and health.get("running", 0) == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    return float("inf")


class RssSampler:
    """Resident memory of one process, sampled every `every` seconds in a thread."""

    def __init__(self, pid: int, every: float = 2.0) -> None:
        self.process = psutil.Process(pid)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - began, self.process.memory_info().rss))
            self._stop.wait(self.every)


def markdown(result: SoakResult, args: argparse.Namespace, rss: list[tuple[float, int]]) -> str:
    kinds = sorted({k for k, _ in result.statuses})
    rows = ["| kind | answers (status: count) |", "|---|---|"]
    for kind in kinds:
        counts = ", ".join(
            f"{s or 'closed by client'}: {n}" for (k, s), n in sorted(result.statuses.items()) if k == kind
        )
        rows.append(f"| {kind} | {counts} |")
    lat = ["| requests | answered | p50 (s) | p99 (s) |", "|---|---|---|---|"]
    for kinds_ in [(k,) for k in VALID] + [VALID]:
        n = sum(len(result.latencies[k]) for k in kinds_)
        p50, p99 = result.percentile(0.5, kinds_), result.percentile(0.99, kinds_)
        lat.append(f"| {' + '.join(kinds_)} | {n} | {p50:.2f} | {p99:.2f} |")
    mb = [r / 2**20 for _, r in rss]
    start = mb[0] if mb else float("nan")
    middle = mb[len(mb) // 2] if mb else float("nan")
    verdict = "passed" if ok(result) else "FAILED"
    problems = sorted(Counter(result.problems).items(), key=lambda p: -p[1])[:10]
    return "\n".join(
        [
            "# tunelab serve: soak test",
            "",
            f"Model `{args.model}` ({args.dtype}, {args.threads} torch threads, batch {args.max_batch_size}), "
            f"{result.clients} concurrent clients for {result.seconds:.0f} s on 127.0.0.1, "
            f"max_tokens={args.max_tokens}, "
            f"body limit {args.max_body_bytes} bytes. Machine: {platform.machine()}, {os.cpu_count()} CPUs "
            f"(shared with other work while measured), Python {platform.python_version()}.",
            "",
            f"**{verdict}**: {result.server_errors} answers with a 5xx; {result.valid_answered} of "
            f"{result.valid_sent} valid requests answered well-formed; {len(result.problems)} unexpected outcomes; "
            f"queue and batch empty {result.drain_seconds:.2f} s after the last client stopped.",
            "",
            "Request mix (weights): " + ", ".join(f"{k} {w}" for k, w in KINDS.items()) + ". Invalid requests are "
            "drawn from 11 client mistakes (bad JSON, text/plain, empty prompt, unknown model, seed out of range, "
            "...); oversized ones are a body past the limit (413) or a prompt past the model's context (400); "
            "cancelled ones close a stream after its first chunk or give up on a plain request after 0.2 s.",
            "",
            *rows,
            "",
            "Latency of valid requests (sent to last byte, queueing included):",
            "",
            *lat,
            "",
            f"Server resident memory: {start:.0f} MB after the warm-up, {middle:.0f} MB halfway, "
            f"{mb[-1] if mb else float('nan'):.0f} MB at the end (peak {max(mb) if mb else float('nan'):.0f} MB); "
            f"growth {(mb[-1] - start) if mb else float('nan'):+.0f} MB over the run, "
            f"{(mb[-1] - middle) if mb else float('nan'):+.0f} MB over its second half ({len(mb)} samples).",
            *(
                ["", "Unexpected outcomes (most frequent first):", *[f"- {n} x {p}" for p, n in problems]]
                if problems
                else []
            ),
            "",
            f"Command: `{' '.join(['python', *sys.argv])}`",
            "",
        ]
    )


def ok(result: SoakResult) -> bool:
    return (
        result.server_errors == 0
        and not result.problems
        and result.valid_answered == result.valid_sent
        and result.drain_seconds < 30
    )


def start_server(args: argparse.Namespace, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "tunelab.cli", "serve", args.model, "--port", str(args.port), "--name", "soak",
        "--dtype", args.dtype, "--threads", str(args.threads), "--max-batch-size", str(args.max_batch_size),
        "--max-queue", "256", "--max-body-bytes", str(args.max_body_bytes), "--max-tokens-limit", "256",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server did not come up in 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model source or run folder to serve")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load before memory is measured")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000)
    parser.add_argument("--context-tokens", type=int, default=8192, help="the served model's context length")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_soak.md")
    args = parser.parse_args()

    url = f"http://127.0.0.1:{args.port}"
    log = Path(tempfile.gettempdir()) / "tunelab-serve-soak.log"
    proc = start_server(args, log)
    common = dict(model="soak", max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                  context_tokens=args.context_tokens)  # fmt: skip
    try:
        warm = asyncio.run(run_soak(url, clients=args.clients, seconds=args.warmup, seed=1, **common))
        with RssSampler(proc.pid) as rss:
            result = asyncio.run(run_soak(url, clients=args.clients, seconds=args.seconds, **common))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    result.problems += [f"warm-up: {p}" for p in warm.problems]
    report = markdown(result, args, rss.samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0 if ok(result) and warm.server_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
