"""Automatic settings (`training.learning_rate/epochs/batch_size: auto`) measured on SmolLM2-135M-Instruct with LoRA.

Phase `derive`: a small grid (learning rate x epochs) on four derivation tasks of different kinds and sizes
(benchmarks/auto_tasks.py: short dates, JSON extraction, a one-word label, a long templated notice); the rules of
`tunelab.train.auto` are read off it. Phase `heldout`: on two tasks the rules never saw, the library's fixed
defaults (1 epoch, lr 2e-4, batch 8), a small hand-tuned grid, and `auto` (a config naming only the data and
eval settings, every training setting `auto`). Every arm is a real `run_training` in its own process (one CPU
thread each, several at once); its greedy answers are scored on the task's test rows (exact match, with a 95%
bootstrap interval and McNemar's paired test against the best arm from `tunelab.eval.stats`).

Usage: python benchmarks/auto_settings.py [--phase grid|auto|all] [--workers 3] [--report-only]
Results: benchmarks/results/auto_settings.json (every arm, kept between invocations: a finished arm is not run
again) and auto_settings.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import yaml  # noqa: E402
from auto_tasks import write_task  # noqa: E402
from techniques_common import device_note  # noqa: E402

from tunelab.eval.stats import bootstrap_ci, mcnemar  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = Path("/tmp/tunelab-auto-settings")
DERIVE = {"dates": (64, 32), "json": (48, 32), "label": (24, 24), "notice": (48, 32)}
"""Derivation tasks: (train rows, test rows)."""
HELDOUT = {"digits": (32, 24), "clock": (48, 32)}
MAX_NEW_TOKENS = {"dates": 16, "json": 40, "label": 6, "notice": 72, "digits": 8, "clock": 8}
GRID = [(1e-3, 1), (1e-3, 4), (3e-3, 4)]
HELDOUT_GRID = [(1e-3, 4), (3e-3, 4)]
"""The hand-tuned search on a held-out task (around what the derivation grid found good)."""
DEFAULTS: list[str] = []
"""The library's defaults: no training setting given."""
AUTO = ["training.learning_rate=auto", "training.epochs=auto", "training.batch_size=auto"]


def arm_overrides(arm: str) -> list[str]:
    """`default`, `auto`, or `lr<rate>-e<epochs>` (batch 8)."""
    if arm == "default":
        return DEFAULTS
    if arm == "auto":
        return AUTO
    lr, epochs = arm.removeprefix("lr").split("-e")
    return [f"training.learning_rate={lr}", f"training.epochs={epochs}", "training.batch_size=8"]


def grid_arm(lr: float, epochs: int) -> str:
    return f"lr{lr:g}-e{epochs}"


def train_arm(task: str, arm: str, rows: tuple[int, int]) -> dict[str, Any]:
    """One run of `arm` on `task` in its own folder; its scores, per-example exact matches and chosen settings."""
    import torch
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.recipes.run import run_training

    torch.set_num_threads(1)
    train, test = write_task(WORK / "data", task, *rows)
    cfg = load_config(None, [
        f"data.train={train}", f"data.validation={test}", "data.max_length=192", "eval.baseline=false",
        f"eval.max_new_tokens={MAX_NEW_TOKENS[task]}", "training.num_threads=1", "training.log_every=1",
        f"output.dir={WORK / 'runs'}", f"output.name={task}-{arm}", "output.overwrite=true", *arm_overrides(arm),
    ])  # fmt: skip
    start = time.perf_counter()
    result = run_training(cfg, console=Console(quiet=True))
    seconds = time.perf_counter() - start
    chosen = yaml.safe_load((result.run_dir / "config.yaml").read_text())["training"]
    predictions = [json.loads(x) for x in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    return {
        "task": task, "arm": arm, "train_rows": rows[0], "test_rows": rows[1], "seconds": round(seconds, 1),
        "learning_rate": chosen["learning_rate"], "epochs": chosen["epochs"], "batch_size": chosen["batch_size"],
        "steps": int(result.final.get("steps", 0)), "exact_match": result.final.get("exact_match"),
        "token_f1": result.final.get("token_f1"), "val_loss": result.final.get("val_loss"),
        "per_example": [float(p["exact_match"]) for p in predictions],
    }  # fmt: skip


def run_arm(spec: str) -> Path:
    """Train `TASK/ARM` and keep its result as `WORK/arms/TASK-ARM.json` (one process per arm, so that several
    run side by side and a slow one can be stopped alone)."""
    task, arm = spec.split("/")
    rows = {**DERIVE, **HELDOUT}[task]
    out = WORK / "arms" / f"{task}-{arm}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(train_arm(task, arm, rows)))
    return out


def collect(path: Path) -> dict[str, dict[str, Any]]:
    """Every finished arm (the results file's and the work folder's), saved back into the results file."""
    arms = json.loads(path.read_text())["arms"] if path.is_file() else {}
    for file in sorted((WORK / "arms").glob("*.json")):
        one = json.loads(file.read_text())
        arms[f"{one['task']}/{one['arm']}"] = one
    payload = {"arms": arms, "device": device_note(), "model": "smollm2-135m", "method": "lora r16"}
    path.write_text(json.dumps(payload, indent=1))
    return arms


def interval_text(per_example: list[float]) -> str:
    ci = bootstrap_ci(per_example)
    return f"{ci.estimate:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def task_table(task: str, arms: dict[str, dict[str, Any]]) -> list[str]:
    """One task's arms, best first, each with its interval and McNemar's test against the best arm."""
    mine = sorted((a for a in arms.values() if a["task"] == task), key=lambda a: -(a["exact_match"] or 0))
    if not mine:
        return []
    best = next(a for a in mine if a["arm"] not in ("default", "auto"))
    lines = [f"### {task} ({mine[0]['train_rows']} train rows, {mine[0]['test_rows']} test rows)", "",
             "| arm | lr | epochs | batch | steps | exact match [95% CI] | vs best grid arm (p) | token F1 | val loss "
             "| seconds |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in mine:
        test = mcnemar(best["per_example"], a["per_example"]) if a is not best else None
        versus = f"{test.delta.estimate:+.1%} (p={test.p_value:.2f})" if test else "best"
        lines.append(
            f"| {a['arm']} | {a['learning_rate']:g} | {a['epochs']} | {a['batch_size']} | {a['steps']} | "
            f"{interval_text(a['per_example'])} | {versus} | {a['token_f1'] or 0:.3f} | {a['val_loss'] or 0:.4f} | "
            f"{a['seconds']:.0f} |"
        )
    return [*lines, ""]


def write_report(arms: dict[str, dict[str, Any]], out: Path) -> None:
    lines = ["# Automatic settings on SmolLM2-135M-Instruct (LoRA r16)", "",
             "Each arm is one `run_training` run; exact match on the task's test rows (greedy answers), with a "
             "95% bootstrap interval and McNemar's paired test against the task's best grid arm "
             "(`tunelab.eval.stats`). Command: `python benchmarks/auto_settings.py --phase all`.", "",
             "## Derivation tasks (the rules of `tunelab.train.auto` were read off these)", ""]  # fmt: skip
    for task in DERIVE:
        lines += task_table(task, arms)
    lines += ["## Held-out tasks (never used to fit the rules)", ""]
    for task in HELDOUT:
        lines += task_table(task, arms)
    lines += [f"Device: {device_note()}", ""]
    out.write_text("\n".join(lines))
    print(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", default=[], help="TASK/ARM to train, e.g. digits/auto")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for spec in args.arm:
        print(f"{spec}: {run_arm(spec)}", flush=True)
    write_report(collect(RESULTS / "auto_settings.json"), RESULTS / "auto_settings.md")


if __name__ == "__main__":
    main()
