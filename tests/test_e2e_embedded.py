"""End to end on the embedded SmolLM2-135M through the real command line (slow: minutes on 2 cores).

The task is generated here and appears nowhere else in the project: pull the order code out of a shipping
note. The config names only the data and a few hyperparameters; every other setting is a default.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CITIES = ["Oslo", "Lima", "Porto", "Cairo", "Quito", "Hanoi", "Perth", "Accra", "Turin", "Leeds"]
ITEMS = ["lamps", "chairs", "cables", "boxes of tea", "bicycles", "monitors", "kettles", "rugs"]
ASKS = ["What is the order code?", "Give the order code only.", "Which order code is mentioned?"]


def order_task(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        code = f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randint(1, 9)}-{rng.randint(100, 999)}"
        note = (
            f"Order {code}: {rng.randint(2, 40)} {rng.choice(ITEMS)} shipped to {rng.choice(CITIES)} "
            f"on day {rng.randint(1, 28)}, invoice {rng.randint(1000, 9999)}."
        )
        rows.append({"messages": [{"role": "user", "content": f"{note}\n{rng.choice(ASKS)}"},
                                  {"role": "assistant", "content": code}]})  # fmt: skip
    return rows


def test_unseen_chat_task_improves_a_lot_with_a_minimal_config(tmp_path: Path) -> None:
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in order_task(400, seed=7)))
    config = tmp_path / "orders.yaml"
    config.write_text(
        f"data:\n  train: orders.jsonl\ntraining:\n  epochs: 2\n  learning_rate: 1.0e-3\n"
        f"output:\n  dir: {tmp_path / 'runs'}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(config)], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "orders"
    before = json.loads((run_dir / "eval_baseline.json").read_text())
    after = json.loads((run_dir / "eval.json").read_text())
    assert before["exact_match"] < 0.2
    assert after["exact_match"] > before["exact_match"] + 0.5
    assert after["val_loss"] < before["val_loss"] / 2
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert train_lines and all(x["tokens_per_s"] > 0 and x["peak_mem_mb"] > 0 for x in train_lines)
    assert "exact_match" in done.stdout and "base" in done.stdout and "tuned" in done.stdout
