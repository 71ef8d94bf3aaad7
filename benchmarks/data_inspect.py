"""Benchmark: `tunelab data inspect` on generated short chat rows (the rows of data_prepare.py).

Runs the real command in a subprocess per setting and reports wall seconds, CPU seconds (user + system of the
command and its workers) and peak memory. On a shared machine wall time depends on the load, so CPU seconds
(and the load average, recorded) are the number to compare.

    .venv/bin/python benchmarks/data_inspect.py --rows 200000

Writes benchmarks/results/data_inspect.json and data_inspect.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data_prepare import RESULTS, generate  # the same generated rows as the prepare benchmark

SETTINGS = {
    "counts only (--model none --no-near)": ["--model", "none", "--no-near"],
    "default (near duplicates, token lengths of 5,000 rows)": [],
    "default, --num-proc 2": ["--num-proc", "2"],
}


def measure(data: Path, extra: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "tunelab.cli", "data", "inspect", str(data), "--json", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    report = json.loads(done.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024),  # the largest child so far (Linux: KiB)
        "load_avg_1min": round(load, 1),
        "rows": report["rows"],
        "rejected": report["rejected"],
        "exact_duplicates": report["duplicates"]["exact"],
        "near_duplicates": report["duplicates"]["near"],
    }


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-inspect-") as tmp:
        data = Path(tmp) / f"chat_{args.rows}.jsonl"
        generate(data, args.rows)
        mb = round(data.stat().st_size / 1e6, 1)
        for name, extra in SETTINGS.items():
            result = {"setting": name, "file_mb": mb, **measure(data, extra)}
            print(json.dumps(result), flush=True)
            results.append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    (RESULTS / "data_inspect.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    lines = ["# `tunelab data inspect` benchmark", "",
             f"{args.rows:,} generated short chat rows ({mb} MB; 0.5% broken, 3% exact and 2% near duplicates), "
             f"{os.cpu_count()} CPUs shared with other work (load average recorded). Every row is read and "
             "validated in every setting.", "",
             "| setting | wall s | CPU s | peak RSS MB | load avg | rejected | exact dup | near dup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['setting']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | {r['load_avg_1min']} | "
                     f"{r['rejected']:,} | {r['exact_duplicates']:,} | {_n(r['near_duplicates'])} |")  # fmt: skip
    (RESULTS / "data_inspect.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
