"""Benchmark: how often `tunelab monitor`'s embedding drift test alarms, with the real encoder (all-MiniLM-L6-v2).

Training inputs are weekday questions about dates written from four templates; each live window holds 60
questions. Null windows are fresh samples of the same generator (every alarm is a false one); shifted windows
mix in questions the training data never had. The test runs as the monitor runs it (`signals.mmd_test`, 500
permutations, a reference sample of 200), so the rates below are the monitor's own.

    flock /tmp/bench.lock .venv/bin/python benchmarks/monitor_drift.py

Writes benchmarks/results/monitor_drift.json and monitor_drift.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from tunelab.models.pooling import encoder_vectors
from tunelab.recipes.monitor.signals import mmd_test

RESULTS = Path(__file__).parent / "results"
TEMPLATES = ["What day of the week was {d}?", "On which weekday did {d} fall?", "Tell me the weekday of {d}.",
             "{d}: which day of the week?"]  # fmt: skip
PARAPHRASES = ["If I was born on {d}, what weekday was that?", "Was {d} a weekend or a weekday, and which day?"]
OTHER_TOPIC = ["Recommend a recipe for {n} people with mushrooms", "Which ferry leaves the harbour at {n} o'clock?",
               "How many calories are in {n} bananas?", "Translate 'good morning' into {n} languages"]  # fmt: skip
CYRILLIC = ["Какой день недели был {d}?", "В какой день недели выпало {d}?"]


def date(rng: random.Random) -> str:
    return f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def question(rng: random.Random, templates: list[str]) -> str:
    return rng.choice(templates).format(d=date(rng), n=rng.randint(2, 12))


def window(rng: random.Random, shifted: list[str] | None, share: float, size: int) -> list[str]:
    return [question(rng, shifted if shifted and rng.random() < share else TEMPLATES) for _ in range(size)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--null-windows", type=int, default=60)
    parser.add_argument("--shifted-windows", type=int, default=15)
    parser.add_argument("--size", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    reference = [question(rng, TEMPLATES) for _ in range(200)]
    cases = {"null (same generator)": (None, 0.0, args.null_windows),
             "new phrasings of the task, 30%": (PARAPHRASES, 0.3, args.shifted_windows),
             "another topic, 20%": (OTHER_TOPIC, 0.2, args.shifted_windows),
             "another topic, 50%": (OTHER_TOPIC, 0.5, args.shifted_windows),
             "the task in Russian, 100%": (CYRILLIC, 1.0, args.shifted_windows)}  # fmt: skip
    windows = {name: [window(rng, s, share, args.size) for _ in range(n)] for name, (s, share, n) in cases.items()}
    texts = reference + [t for ws in windows.values() for w in ws for t in w]
    started = time.perf_counter()
    vectors = encoder_vectors("minilm-l6", texts).numpy()
    encode_s = time.perf_counter() - started
    ref, at = vectors[: len(reference)], len(reference)
    rows = []
    test_s = 0.0
    for name, ws in windows.items():
        p_values = []
        for i, w in enumerate(ws):
            live, at = vectors[at : at + len(w)], at + len(w)
            tick = time.perf_counter()
            p_values.append(mmd_test(ref, live, 500, seed=i)[1])
            test_s += time.perf_counter() - tick
        row = {"case": name, "windows": len(ws)}
        for alpha in (0.05, 0.01):
            k = sum(p < alpha for p in p_values)
            row[f"alarm_rate_{alpha}"] = k / len(ws)
            row[f"alarm_ci_{alpha}"] = wilson(k, len(ws))
        row["median_p"] = sorted(p_values)[len(p_values) // 2]
        rows.append(row)
    tests = sum(len(ws) for ws in windows.values())
    result = {"window_size": args.size, "reference": len(reference), "permutations": 500, "rows": rows,
              "encode_seconds": round(encode_s, 1), "texts": len(texts),
              "test_ms_per_window": round(1000 * test_s / tests, 1)}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitor_drift.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Embedding drift test: alarm rates (all-MiniLM-L6-v2, MMD, 500 permutations)", "",
        f"Reference: {len(reference)} training questions; windows of {args.size} live questions. Null rows: every "
        "alarm is false (the test's false-positive rate); other rows: its power. 95% Wilson intervals.", "",
        "| case | windows | alarms at p<0.05 | alarms at p<0.01 | median p |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        cells = [f"{r[f'alarm_rate_{a}']:.2f} [{r[f'alarm_ci_{a}'][0]:.2f}, {r[f'alarm_ci_{a}'][1]:.2f}]"
                 for a in (0.05, 0.01)]  # fmt: skip
        lines.append(f"| {r['case']} | {r['windows']} | {cells[0]} | {cells[1]} | {r['median_p']:.3g} |")
    lines += ["", f"Encoding {len(texts)} texts took {encode_s:.1f} s (1 CPU thread, shared machine); one test "
              f"{result['test_ms_per_window']} ms."]  # fmt: skip
    (RESULTS / "monitor_drift.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
