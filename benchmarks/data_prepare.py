"""Benchmark: prepare generated short chat rows (validate + clean + exact/near dedup + tokenize).

Generates N rows of short chats (with 3% exact duplicates, 2% near duplicates and 0.5% broken rows), runs
`tunelab.data.pipeline.prepare_dataset` on them in a fresh process per size and arm, and reports rows/s, seconds
per stage, and peak memory (resident set of the main process and of the largest worker). Several sizes show
whether peak memory grows with the file. Arms, each on the same file:

- tunelab: the pipeline as it is (chat template once per conversation shape, one tokenizer batch per chunk);
- tunelab per-row: the same pipeline tokenising row by row with three template renders per turn (the way before
  data.chat_shapes), to show what that change bought within one run;
- datasets.map: the usual way (as TRL prepares SFT data): `datasets.load_dataset("json")` on the valid rows, then
  `map` with `tokenizer.apply_chat_template(messages, tokenize=True)` per row on the same processes. It validates,
  cleans and deduplicates nothing, so it is a lower bound on that way's cost.

    flock /tmp/bench.lock .venv/bin/python benchmarks/data_prepare.py --sizes 100000,1000000 --num-proc 2

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


ARMS = ("tunelab", "tunelab per-row", "datasets.map")


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line).get("messages"), list)
    except (json.JSONDecodeError, AttributeError):
        return False


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


def per_row(examples, tokenizer, *args):
    """The pipeline's tokenising as it was before batching: `tokenize_record` row by row."""
    from tunelab.data.tokenize import tokenize_record

    out = []
    for example in examples:
        try:
            out.append(tokenize_record(example, tokenizer, *args))
        except ValueError as exc:
            out.append(exc)
    return out


def _peak_mb() -> tuple[float, float]:
    kib = 1 if sys.platform != "darwin" else 1 / 1024
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024
    return main_mb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 1024


def peer(args: argparse.Namespace) -> None:
    """The datasets.map arm: load the valid rows as a dataset, apply the chat template with tokenize=True."""
    import datasets

    from tunelab.models.load import load_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-peer-") as tmp:
        start = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=args.data, split="train", cache_dir=tmp)
        ds = ds.map(
            lambda row: {"input_ids": tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)},
            num_proc=args.num_proc,
            remove_columns=ds.column_names,
        )
        seconds = time.perf_counter() - start
        tokens = sum(len(x) for x in ds["input_ids"])
    main_mb, worker_mb = _peak_mb()
    print(json.dumps({
        "rows": len(ds), "seconds": round(seconds, 1), "rows_per_s": round(len(ds) / seconds), "stages": {},
        "peak_rss_main_mb": round(main_mb), "peak_rss_worker_mb": round(worker_mb), "train_tokens": tokens,
    }))  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process, so its peak memory is its own)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunelab.data import pipeline
    from tunelab.data.config import DataSection
    from tunelab.data.pipeline import prepare_dataset
    from tunelab.models.load import load_tokenizer

    if args.arm == "tunelab per-row":
        pipeline.tokenize_records = per_row  # workers are forked after this, so they see it too
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        cfg = DataSection(train=[args.data], val_fraction=0.01, cache=False, cache_dir=tmp, num_proc=args.num_proc,
                          max_length=256, max_bad_fraction=0.05, clean={"dedup": "near"})  # fmt: skip
        start = time.perf_counter()
        report = prepare_dataset(cfg, tokenizer, 0, Path(tmp) / "out").report
        seconds = time.perf_counter() - start
    main_mb, worker_mb = _peak_mb()
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
    parser.add_argument("--arms", default=",".join(ARMS), help="which of: " + ", ".join(ARMS))
    parser.add_argument("--name", default="data_prepare", help="results file name (results/NAME.json and .md)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arm", default="tunelab", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peer(args) if args.arm == "datasets.map" else child(args)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-data-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            data, valid = Path(tmp) / f"chat_{size}.jsonl", Path(tmp) / f"valid_{size}.jsonl"
            generate(data, size)
            mb = data.stat().st_size / 1e6
            with data.open() as src, valid.open("w") as dst:  # the peer arm's input: the rows that parse
                dst.writelines(line for line in src if _parses(line))
            for arm in args.arms.split(","):
                cmd = [sys.executable, __file__, "--child", "--data", str(valid if arm == "datasets.map" else data),
                       "--num-proc", str(args.num_proc), "--tokenizer", args.tokenizer, "--arm", arm]  # fmt: skip
                run = subprocess.run(cmd, check=True, capture_output=True, text=True)
                out = run.stdout.strip().splitlines()[-1]
                result = {"arm": arm, "file_mb": round(mb, 1), "num_proc": args.num_proc, **json.loads(out)}
                print(json.dumps(result), flush=True)
                results.append(result)
            data.unlink()
            valid.unlink()
    RESULTS.mkdir(parents=True, exist_ok=True)
    from tunelab.core.device import cpu_name  # here: the measured children import tunelab themselves

    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": sys.version.split()[0], "tokenizer": args.tokenizer}
    results.sort(key=lambda r: (r["file_mb"], ARMS.index(r["arm"])))
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    lines = ["# Data pipeline benchmark", "",
             f"Short generated chat rows, validate + clean + exact/near dedup (MinHash, threshold 0.8) + tokenize "
             f"({args.tokenizer} tokenizer, ChatML template), {args.num_proc} processes, {os.cpu_count()} CPUs "
             f"({machine['cpu']}).", "",
             "Each size's rows/s ratio is against the datasets.map arm on the same rows (that arm does only the "
             "template and tokenizer).", "",
             "| arm | rows | file MB | seconds | rows/s | vs datasets.map | peak RSS main MB | peak RSS worker MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    peers = {r["file_mb"]: r["rows_per_s"] for r in results if r["arm"] == "datasets.map"}
    for r in results:
        ratio = f"{r['rows_per_s'] / peers[r['file_mb']]:.2f}x" if r["file_mb"] in peers else "-"
        lines.append(f"| {r['arm']} | {r['rows']:,} | {r['file_mb']} | {r['seconds']} | {r['rows_per_s']:,} | "
                     f"{ratio} | {r['peak_rss_main_mb']} | {r['peak_rss_worker_mb']} |")  # fmt: skip
    lines += ["", "Seconds per stage (largest run of each tunelab arm):", ""]
    for arm in ("tunelab", "tunelab per-row"):
        runs = [r for r in results if r["arm"] == arm]
        if runs:
            lines.append(f"- {arm}: " + json.dumps(runs[-1]["stages"]))
    lines.append("")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
