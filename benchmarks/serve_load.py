"""Load test for `tunelab serve`: N concurrent clients for a bounded time, single-request vs batched throughput.

Starts the server as a subprocess on 127.0.0.1 (so the load generator does not share its interpreter), then runs:

1. one client, requests back to back (the single-request baseline);
2. N clients against a server with batching off (--max-batch-size 1: requests queue and run one at a time);
3. N clients against the batching server.

Every response is checked (status 200, one choice, text, finish_reason, usage adding up; streamed responses end
with [DONE]); any error is counted and reported. Writes a markdown table (default
benchmarks/results/serve_load.md) and prints it.

    .venv/bin/python benchmarks/serve_load.py --model smollm2-135m --clients 50 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

PROMPTS = [
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is 12 times 7?",
    "Give a short tip for learning to code.",
    "Describe a cat in a few words.",
]


@dataclass
class LoadResult:
    name: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def row(self) -> dict[str, str]:
        lat = sorted(self.latencies) or [float("nan")]
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        return {
            "scenario": self.name,
            "clients": str(self.clients),
            "requests ok": str(self.requests),
            "errors": str(len(self.errors)),
            "tokens/s": f"{self.completion_tokens / self.seconds:.1f}",
            "requests/s": f"{self.requests / self.seconds:.2f}",
            "p50 latency (s)": f"{statistics.median(lat):.2f}",
            "p99 latency (s)": f"{p99:.2f}",
        }


async def _one_request(client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int, stream: bool) -> int:
    """Send one chat request, check the response is well-formed, return its completion tokens."""
    messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    if stream:
        chunks = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.7, seed=i, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        finish, usage = None, None
        async for chunk in chunks:
            if chunk.choices:
                assert chunk.choices[0].index == 0
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert finish in ("stop", "length"), f"stream ended without finish_reason ({finish})"
        assert usage is not None and usage.completion_tokens <= max_tokens
        return usage.completion_tokens
    reply = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.7, seed=i
    )
    assert len(reply.choices) == 1 and isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens <= max_tokens
    return usage.completion_tokens


async def run_load(
    url: str, model: str, clients: int, seconds: float, max_tokens: int, name: str, api_key: str = "none"
) -> LoadResult:
    """`clients` concurrent loops sending requests until `seconds` pass; every 5th client streams."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=seconds + 120)
    result = LoadResult(name, clients, seconds)
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                tokens = await _one_request(client, model, i, max_tokens, stream=k % 5 == 4)
            except Exception as exc:  # every failure is a finding: count it, keep the load going
                result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            else:
                result.latencies.append(time.monotonic() - started)
                result.completion_tokens += tokens
            i += clients

    began = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    result.seconds = time.monotonic() - began  # includes finishing the requests in flight at the deadline
    await client.close()
    return result


def start_server(model: str, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tunelab.cli", "serve", model, "--port", str(port), "--max-queue", "256", *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import urllib.request

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server did not come up in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def markdown(results: list[LoadResult], args: argparse.Namespace, model_id: str) -> str:
    rows = [r.row() for r in results]
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row[h] for h in head) + " |" for row in rows]
    single = next(r for r in results if r.clients == 1)
    batched = results[-1]
    speedup = (batched.completion_tokens / batched.seconds) / max(single.completion_tokens / single.seconds, 1e-9)
    errors = sorted({e for r in results for e in r.errors})[:5]
    return "\n".join(
        [
            "# tunelab serve: load test",
            "",
            f"Model `{model_id}` ({args.dtype}, {args.threads} torch threads), max_tokens={args.max_tokens}, "
            f"{args.seconds:.0f} s per scenario, every 5th client streaming. Machine: {platform.machine()}, "
            f"{os.cpu_count()} CPUs (shared with other work while measured), Python {platform.python_version()}.",
            "",
            *lines,
            "",
            f"Batched throughput vs one request at a time: **{speedup:.1f}x** tokens/s.",
            "Latency is per request (first byte sent to last byte received), including time queued.",
            *(["", "Errors seen:", *[f"- {e}" for e in errors]] if errors else []),
            "",
            f"Command: `{' '.join(['python', *sys.argv])}`",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model source or run folder to serve")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each scenario")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load.md")
    args = parser.parse_args()

    common = ["--dtype", args.dtype, "--threads", str(args.threads), "--name", "bench"]
    url = f"http://127.0.0.1:{args.port}"
    log = Path(tempfile.gettempdir()) / "tunelab-serve-load.log"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: list[LoadResult] = []

    proc = start_server(args.model, args.port, [*common, "--max-batch-size", "1"], log)
    try:
        asyncio.run(run_load(url, "bench", 1, 3, args.max_tokens, "warm-up"))
        results.append(asyncio.run(run_load(url, "bench", 1, args.seconds, args.max_tokens, "single client")))
        no_batch = f"{args.clients} clients, batching off"
        results.append(asyncio.run(run_load(url, "bench", args.clients, args.seconds, args.max_tokens, no_batch)))
    finally:
        stop_server(proc)
    proc = start_server(args.model, args.port, [*common, "--max-batch-size", str(args.max_batch_size)], log)
    try:
        asyncio.run(run_load(url, "bench", 4, 3, args.max_tokens, "warm-up"))
        batched = f"{args.clients} clients, batching (max {args.max_batch_size})"
        results.append(asyncio.run(run_load(url, "bench", args.clients, args.seconds, args.max_tokens, batched)))
    finally:
        stop_server(proc)
    report = markdown(results, args, args.model)
    args.out.write_text(report)
    print(report)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
