"""A 12-trial `tunelab tune` study on the embedded SmolLM2-135M-Instruct (LoRA) over learning rate, epochs and LoRA
rank, on the held-out clock task (benchmarks/auto_tasks.py), against the library's defaults and `auto`.

The study is the real command (`tunelab tune CONFIG --workers K`): Optuna's TPE sampler, median pruning on the
validation loss at every epoch's end, exact match of greedy answers on the task's test rows as the metric. The
default and auto arms are those of benchmarks/auto_settings.py (the same rows, the same scoring), run here when
they are missing. The report puts the best trial beside them with 95% bootstrap intervals and McNemar's test.

Usage: python benchmarks/tune_embedded.py [--trials 12] [--workers 3] [--rows 48]
Results: benchmarks/results/tune_embedded.md (+ .json); the study folder under /tmp/tunelab-auto-settings/study.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml
from auto_settings import HELDOUT, MAX_NEW_TOKENS, RESULTS, WORK, interval_text, run_arm
from auto_tasks import write_task
from techniques_common import device_note

from tunelab.eval.stats import mcnemar

TASK = "clock"
SPACE = {
    "training.learning_rate": {"type": "loguniform", "low": 3e-4, "high": 5e-3},
    "training.epochs": {"type": "int", "low": 1, "high": 4},
    "method.r": {"type": "categorical", "choices": [8, 16, 32]},
}


def study_config(trials: int, workers: int) -> Path:
    """The study's YAML: the task's data, eval on its test rows, the search space above."""
    train, test = write_task(WORK / "data", TASK, *HELDOUT[TASK])
    cfg = {
        "data": {"train": str(train), "validation": str(test), "max_length": 192},
        "method": {"name": "lora"},
        "training": {"batch_size": 8, "num_threads": 1},
        "eval": {"baseline": False, "max_new_tokens": MAX_NEW_TOKENS[TASK]},
        "output": {"dir": str(WORK / "study-runs"), "name": "clock-tune"},
        "tune": {"study": "clock-study", "trials": trials, "workers": workers, "metric": "exact_match",
                 "prune_on": "val_loss", "pruner": "median", "params": SPACE},
    }  # fmt: skip
    path = WORK / "clock-study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def best_trial(folder: Path) -> dict:
    """The best finished trial's values, metric and per-example exact matches (from its own run folder)."""
    rows = [r for r in _csv_rows(folder / "trials.csv") if r.get("state") == "complete" and r.get("exact_match")]
    best = max(rows, key=lambda r: float(r["exact_match"]))
    run = folder / best["run"]
    predictions = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    return {**best, "per_example": [float(p["exact_match"]) for p in predictions], "trials": len(rows)}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    path = study_config(args.trials, args.workers)
    subprocess.run([sys.executable, "-m", "tunelab.cli", "tune", str(path)], check=True)
    best = best_trial(WORK / "study-runs" / "clock-study")
    arms = {}
    for arm in ("default", "auto"):
        file = WORK / "arms" / f"{TASK}-{arm}.json"
        arms[arm] = json.loads((file if file.is_file() else run_arm(f"{TASK}/{arm}")).read_text())
    lines = [f"# A {args.trials}-trial study on SmolLM2-135M-Instruct: best vs default vs auto ({TASK} task)", "",
             f"Search space: {json.dumps(SPACE)}; TPE, median pruning on val_loss; {best['trials']} trials "
             "completed. Exact match on the task's test rows, 95% bootstrap interval; McNemar against the best.", "",
             "| arm | exact match [95% CI] | vs best (p) |", "|---|---|---|",
             f"| best trial ({best['run']}) | {interval_text(best['per_example'])} | best |"]  # fmt: skip
    for name, arm in arms.items():
        test = mcnemar(best["per_example"], arm["per_example"])
        versus = f"{test.delta.estimate:+.1%} (p={test.p_value:.2f})"
        settings = f"lr {arm['learning_rate']:g}, {arm['epochs']} epochs"
        lines.append(f"| {name} ({settings}) | {interval_text(arm['per_example'])} | {versus} |")
    lines += ["", f"Device: {device_note()}", ""]
    (RESULTS / "tune_embedded.md").write_text("\n".join(lines))
    (RESULTS / "tune_embedded.json").write_text(json.dumps({"best": best, "arms": arms}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
