"""Benchmark: prepare generated short chat rows (validate + clean + exact/near dedup + tokenize).

Generates N rows of short chats (with 3% exact duplicates, 2% near duplicates and 0.5% broken rows), runs
`tunelab.data.prepare.prepare_dataset` on them in a fresh process per size, and reports rows/s, seconds per
stage, and peak memory (resident set of the main process and of the largest worker). Several sizes show
whether peak memory grows with the file.

    .venv/bin/python benchmarks/data_prepare.py --sizes 100000,1000000 --num-proc 2

Writes benchmarks/results/data_prepare.json and data_prepare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOPICS = ["weather", "python", "cooking", "history", "music", "travel", "math", "health", "space", "sports"]
# 400 made-up words: a vocabulary the tokenizer splits into a few pieces each, like real text.
WORDS = [
    a + b + c
    for a in ("ba", "ko", "mi", "ta", "re", "su", "lo", "ne", "vi", "da")
    for b in "aeiou"
    for c in ("n", "r", "s", "t", "la", "mo", "ki", "pe")
]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` JSON lines of short chats, streaming (constant memory)."""
    rng = random.Random(seed)
    recent: list[dict] = []
    with path.open("w") as fh:
        for i in range(rows):
            r = rng.random()
            if r < 0.005:
                fh.write('{"messages": [{"role": "user", "content": "broken' + ("\n" if i % 2 else ' "}]}\n'))
                continue
            if r < 0.035 and recent:
                row = rng.choice(recent)  # exact duplicate of a recent row
            elif r < 0.055 and recent:
                src = rng.choice(recent)  # near duplicate: case and punctuation changed
                row = {"messages": [{"role": m["role"], "content": m["content"].upper() + "!"}
                                    for m in src["messages"]]}  # fmt: skip
            else:
                topic = rng.choice(TOPICS)
                question = " ".join(rng.choices(WORDS, k=rng.randint(6, 16)))
                answer = " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))
                row = {"messages": [{"role": "user", "content": f"A question about {topic} number {i}: {question}?"},
                                    {"role": "assistant", "content": answer.capitalize() + "."}]}  # fmt: skip
                recent = ([*recent, row])[-1000:]
            fh.write(json.dumps(row) + "\n")


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process, so its peak memory is its own)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunelab.data.config import DataSection
    from tunelab.data.pipeline import prepare_dataset
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        cfg = DataSection(train=[args.data], val_fraction=0.01, cache=False, cache_dir=tmp, num_proc=args.num_proc,
                          max_length=256, max_bad_fraction=0.05, clean={"dedup": "near"})  # fmt: skip
        start = time.perf_counter()
        report = prepare_dataset(cfg, tokenizer, 0, Path(tmp) / "out").report
        seconds = time.perf_counter() - start
    kib = 1 if sys.platform != "darwin" else 1 / 1024
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 1024
    print(json.dumps({
        "rows": report["rows"], "seconds": round(seconds, 1), "rows_per_s": round(report["rows"] / seconds),
        "stages": report["seconds"], "peak_rss_main_mb": round(main_mb), "peak_rss_worker_mb": round(worker_mb),
        "kept": report["accounting"]["kept"], "rejected": report["rejected"], "removed": report["removed"],
        "train_tokens": report["train_tokens"],
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,300000,1000000", help="row counts to measure")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--tokenizer", default="smollm2-135m", help="model source whose tokenizer is used")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-data-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            data = Path(tmp) / f"chat_{size}.jsonl"
            generate(data, size)
            mb = data.stat().st_size / 1e6
            cmd = [sys.executable, __file__, "--child", "--data", str(data), "--num-proc", str(args.num_proc),
                   "--tokenizer", args.tokenizer]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = {"file_mb": round(mb, 1), "num_proc": args.num_proc, **json.loads(out)}
            print(json.dumps(result), flush=True)
            results.append(result)
            data.unlink()
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "tokenizer": args.tokenizer}
    (RESULTS / "data_prepare.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    lines = ["# Data pipeline benchmark", "",
             f"Short generated chat rows, validate + clean + exact/near dedup (MinHash, threshold 0.8) + tokenize "
             f"({args.tokenizer} tokenizer, ChatML template), {args.num_proc} processes, {os.cpu_count()} CPUs.", "",
             "| rows | file MB | seconds | rows/s | peak RSS main MB | peak RSS worker MB |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['file_mb']} | {r['seconds']} | {r['rows_per_s']:,} | "
                     f"{r['peak_rss_main_mb']} | {r['peak_rss_worker_mb']} |")  # fmt: skip
    lines += ["", "Seconds per stage (largest run): " + json.dumps(results[-1]["stages"]), ""]
    (RESULTS / "data_prepare.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
