"""Generation side by side with llama.cpp on the same model, exported by `tunelab export --format gguf`.

1. Setup: builds llama-cpp-python from its source package once (benchmarks/llama_cpp_setup.py, CPU only, under
   `flock /tmp/bench.lock`), and checks that tunelab's vendored pre-tokenizer table is that source's.
2. Interop: exports the model (the embedded SmolLM2 by default; `--tuned RUN_DIR` adds a trained run) as f32, f16
   and q8_0 GGUF with the `tunelab export` command, loads each in llama.cpp (the check by the other tool itself),
   compares llama.cpp's tokenisation of every rendered dates test prompt with transformers', and compares llama.cpp's
   greedy answers with tunelab's (`generate_answers`, fp32) on the examples/dates test prompts.
3. Speed: greedy tokens/s at 1 and at 32 concurrent sequences, same prompts, same thread count, for tunelab's
   batched `generate_answers` (what `tunelab eval` runs), tunelab's serve engine (continuous batching, what
   `tunelab serve` runs, with bf16 weights as the server loads them where the CPU computes bf16 fast, and fp32;
   on a CPU without AVX512-BF16/AMX the bf16 rows are not what a user runs) and llama.cpp (its C
   API driven like its `batched` example: one llama_decode per step for every running sequence). Tokens counted
   are the ones each engine returns (up to a stop token); time includes the prompts' prefill.

    flock /tmp/bench.lock .venv/bin/python benchmarks/generate_speed.py [--tuned runs/dates-demo]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from llama_cpp_setup import TABLE, Greedy, LlamaCpp, extract_table, sdist
from torch import nn

from tunelab.core.device import cpu_name, use_bf16
from tunelab.core.types import Message
from tunelab.methods.trained import load_trained
from tunelab.models.chat import prompt_text
from tunelab.models.generate import generate_answers, stop_token_ids
from tunelab.serve.engine import Engine, Handle, SequenceSpec
from tunelab.serve.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
DATES = ROOT / "examples" / "dates" / "test.jsonl"
QUANTS = ("f32", "f16", "q8_0")


def dates_prompts() -> tuple[list[list[Message]], list[str]]:
    """The dates test conversations without their answers, and the reference answers."""
    rows = [json.loads(line)["messages"] for line in DATES.read_text().splitlines() if line.strip()]
    prompts = [[Message(role=m["role"], content=m["content"]) for m in r[:-1]] for r in rows]
    return prompts, [r[-1]["content"] for r in rows]


def export_gguf(spec: str, out: Path, quant: str) -> tuple[Path, float]:
    """`tunelab export SPEC --format gguf --quant Q --out OUT`, as a user runs it; returns the file and seconds."""
    start = time.perf_counter()
    cmd = [str(ROOT / ".venv" / "bin" / "tunelab"), "export", spec, "--format", "gguf", "--quant", quant]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    return out, time.perf_counter() - start


class Counted(nn.Module):
    """`model` as generate_answers sees it, keeping each row's generated ids (up to its stop token) to count them.

    A batch runs until its longest row stops; only each row's own tokens are counted, as an engine would bill."""

    def __init__(self, model: nn.Module, stops: list[int]) -> None:
        super().__init__()
        self.inner, self.stops, self.rows = model, set(stops), []
        self.generation_config = model.generation_config

    def generate(self, **kwargs) -> torch.Tensor:
        out = self.inner.generate(**kwargs)
        for row in out[:, kwargs["input_ids"].shape[1] :].tolist():
            cut = next((k for k, t in enumerate(row) if t in self.stops), len(row))
            self.rows.append(row[:cut])
        return out


def tunelab_eval(model, tokenizer, prompts, max_new: int, batch: int, precision: str) -> tuple[Greedy, list[str]]:
    """tunelab's batched greedy generation (`tunelab eval`): generated ids (in batch order) and the answers."""
    counted = Counted(model, stop_token_ids(model, tokenizer))
    start = time.perf_counter()
    answers = generate_answers(
        counted, tokenizer, prompts, max_new_tokens=max_new, batch_size=batch, show_progress=False, precision=precision
    )
    return Greedy(counted.rows, time.perf_counter() - start), answers


def tunelab_serve(model, tokenizer, prompts: list[list[int]], max_new: int, batch: int) -> Greedy:
    """tunelab's serve engine: `batch` rows decoded together, each prompt its own request (as clients send)."""
    engine = Engine(model, tokenizer, max_batch_size=batch, max_queue=len(prompts)).start()

    async def one(ids: list[int]) -> int:
        handle = Handle(asyncio.get_running_loop())
        engine.submit(
            [SequenceSpec(index=0, prompt=ids, params=SamplingParams(max_tokens=max_new, temperature=0))], handle
        )
        while True:
            event = await handle.events.get()
            if event.finish_reason is not None:
                return event.completion_tokens

    async def run() -> list[int]:
        return await asyncio.gather(*(one(ids) for ids in prompts))

    try:
        start = time.perf_counter()
        counts = asyncio.run(run())
        return Greedy([[0] * n for n in counts], time.perf_counter() - start)
    finally:
        engine.stop()


def answers_of(tokenizer, result: Greedy) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in result.ids]


def interop(spec: str, label: str, tmp: Path, threads: int, max_new: int) -> tuple[list[dict], dict]:
    """Export `spec` in every quantisation, load it in llama.cpp, compare tokens and greedy answers."""
    model, tokenizer = load_trained(spec, dtype=torch.float32)
    conversations, references = dates_prompts()
    texts = [prompt_text(tokenizer, c) for c in conversations]
    hf_ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    ours = tunelab_eval(model, tokenizer, conversations, max_new, 32, "fp32")[1]
    stops = stop_token_ids(model, tokenizer)
    rows, files = [], {}
    for quant in QUANTS:
        path, seconds = export_gguf(spec, tmp / f"{label}-{quant}.gguf", quant)
        files[quant] = path
        llama = LlamaCpp(path, threads=threads, n_seq=32, n_ctx=8192)
        try:
            same_tokens = sum(llama.tokenize(t) == ids for t, ids in zip(texts, hf_ids, strict=True))
            theirs = answers_of(tokenizer, llama.generate(hf_ids, max_new, stops))
        finally:
            llama.close()
        rows.append(
            {
                "model": label,
                "GGUF": quant,
                "export (s)": f"{seconds:.1f}",
                "loads in llama.cpp": "yes",
                "prompt tokens equal": f"{same_tokens}/{len(texts)}",
                "greedy answers equal": f"{sum(a == b for a, b in zip(ours, theirs, strict=True))}/{len(ours)}",
                "llama.cpp exact match": f"{sum(a == r for a, r in zip(theirs, references, strict=True))}",
                "tunelab exact match": f"{sum(a == r for a, r in zip(ours, references, strict=True))}",
            }
        )
        print(rows[-1], flush=True)
    return rows, {"model": model, "tokenizer": tokenizer, "files": files, "ids": hf_ids, "stops": stops}


PRECISIONS = ("fp32", "bf16") if use_bf16("auto", torch.device("cpu")) else ("fp32",)
"""The tunelab rows' precisions: bf16 only where the CPU computes it fast (AVX512-BF16/AMX); without, a bf16 matmul
is hundreds of times slower than fp32 and `tunelab serve` loads fp32."""


def speed(setup: dict, threads: int, max_new: int, single: int, many: int) -> list[dict]:
    """tokens/s at 1 and `many` concurrent sequences for tunelab eval, tunelab serve and llama.cpp."""
    model, tokenizer, ids = setup["model"], setup["tokenizer"], setup["ids"]
    precisions = PRECISIONS
    served = {"fp32": model}
    if "bf16" in precisions:  # as serve loads it where the CPU computes bf16 fast
        served["bf16"] = copy.deepcopy(model).to(torch.bfloat16)
    conversations = dates_prompts()[0]
    runs: list[tuple[str, str, int, Greedy]] = []
    for concurrent, n in ((1, single), (many, many)):
        first = len(runs)
        for precision in precisions:
            result = tunelab_eval(model, tokenizer, conversations[:n], max_new, concurrent, precision)[0]
            runs.append((f"tunelab eval (generate_answers, {precision})", "-", concurrent, result))
        for precision, weights in served.items():
            result = tunelab_serve(weights, tokenizer, ids[:n], max_new, concurrent)
            runs.append((f"tunelab serve engine ({precision})", "-", concurrent, result))
        for quant, path in setup["files"].items():
            llama = LlamaCpp(path, threads=threads, n_seq=concurrent, n_ctx=max(4096, 256 * concurrent))
            try:
                llama.generate(ids[:1], 4, setup["stops"])  # warm-up: first decode allocates buffers
                result = llama.generate(ids[:n], max_new, setup["stops"])
            finally:
                llama.close()
            runs.append(("llama.cpp", quant, concurrent, result))
        for name, quant, c, result in runs[first:]:
            print(f"{name} {quant} x{c}: {result.tokens / result.seconds:.1f} tokens/s", flush=True)
    return [
        {
            "engine": name,
            "GGUF": quant,
            "concurrent": str(c),
            "sequences": str(len(r.ids)),
            "tokens": str(r.tokens),
            "seconds": f"{r.seconds:.1f}",
            "tokens/s": f"{r.tokens / r.seconds:.1f}",
        }
        for name, quant, c, r in runs
    ]


def table(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r[h] for h in head) + " |" for r in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model source or run folder to export")
    parser.add_argument("--tuned", default=None, help="a trained run folder to check as well (e.g. a dates run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new", type=int, default=24, help="new tokens at most (the dates eval's 24)")
    parser.add_argument("--single", type=int, default=8, help="prompts run one at a time in the 1-sequence rows")
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate_speed.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    same_table = extract_table(sdist()) == json.loads(TABLE.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="generate-speed-") as tmp:
        checks, setup = interop(args.model, args.model, Path(tmp), args.threads, args.max_new)
        if args.tuned:
            checks += interop(args.tuned, Path(args.tuned).name, Path(tmp), args.threads, args.max_new)[0]
        rows = speed(setup, args.threads, args.max_new, args.single, args.concurrent)
    report = "\n\n".join(
        [
            "# Generation: tunelab vs llama.cpp on tunelab's GGUF exports",
            f"Machine: {cpu_name()}, {args.threads} threads for both (torch and "
            f"llama.cpp), llama-cpp-python 0.3.36 built from source (CPU). Prompts: examples/dates/test.jsonl, "
            f"greedy, at most {args.max_new} new tokens. Vendored pre-tokenizer table equal to the sdist's: "
            f"{'yes' if same_table else 'NO'}. Fast bf16 on this CPU: {'yes' if 'bf16' in PRECISIONS else 'no'} "
            f"(tunelab rows in {', '.join(PRECISIONS)}).",
            "## Interop: llama.cpp loads the export, tokenises and answers like tunelab",
            table(checks),
            f"## Speed: 1 and {args.concurrent} concurrent sequences",
            table(rows),
        ]
    )
    Path(args.out).write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
