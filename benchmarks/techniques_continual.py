"""Continual learning: two tasks in sequence (dates, then clock times) with naive fine-tuning, replay, EWC and an
adapter per task, measured as the task x after-stage accuracy matrix, average accuracy and forgetting.

Stage 1 (dates) runs once as a continual run that keeps a replay buffer and the Fisher; each method then continues
it with a second run (`model.source` = that run folder) on clock times, all with the same number of steps.
SmolLM2-135M-Instruct (embedded), LoRA r16 on all linear layers; exact match, greedy, on held-out prompts.

    .venv/bin/python benchmarks/techniques_continual.py                  # 16 steps of 8 per stage, 24 prompts per task
    .venv/bin/python benchmarks/techniques_continual.py --steps 2 --eval-examples 4 --lora-per-task  # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from techniques_common import DATES, MODEL, RESULTS, command, save
from techniques_merge import write_time_task

NAME = "continual"


def subset(src: Path, dst: Path, n: int, seed: int = 0) -> Path:
    rows = src.read_text().splitlines()
    random.Random(seed).shuffle(rows)
    dst.write_text("\n".join(rows[:n]) + "\n")
    return dst


def settings(args: argparse.Namespace) -> list[str]:
    return [
        "method=lora", "method.r=16", "method.alpha=32", "training.learning_rate=1e-3",
        f"training.batch_size={args.batch}", f"training.max_steps={args.steps}",
        f"training.num_threads={args.threads}", "training.log_every=5",
        "data.max_length=256", "eval.baseline=false", "eval.generate=false", "eval.max_new_tokens=12",
        f"continual.eval_examples={args.eval_examples}", "output.overwrite=true",
    ]  # fmt: skip


def run(name: str, work: Path, data: tuple[Path, Path], source: str, args, *extra: str) -> dict:
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.recipes.run import run_training

    cfg = load_config(None, [
        *settings(args), f"model.source={source}", f"data.train={data[0]}", f"data.validation={data[1]}",
        f"output.dir={work}", f"output.name={name}", *extra,
    ])  # fmt: skip
    start = time.perf_counter()
    run_training(cfg, console=Console(quiet=True))
    report = json.loads((work / name / "continual.json").read_text())
    report["wall_s"] = time.perf_counter() - start
    print(name, json.dumps({k: report[k] for k in ("full_matrix", "average_accuracy", "forgetting")}), flush=True)
    return report


def drift(run_dir: Path, ewc_file: Path) -> float:
    """½ Σ F (θ - θ*)² of the run's final weights against stage 1's Fisher and weights (λ = 1)."""
    from tunelab.models.load import load_model
    from tunelab.regularizers.ewc import ewc_penalty
    from tunelab.regularizers.fisher import load_ewc

    state = load_ewc(ewc_file)
    final = json.loads((run_dir / "continual_state.json").read_text())["source"]
    return float(ewc_penalty(load_model(final), state.fisher, state.anchor, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per stage")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--eval-examples", type=int, default=24, help="held-out prompts per task")
    parser.add_argument("--replay-fraction", type=float, default=0.25)
    parser.add_argument("--fisher-samples", type=int, default=16)
    parser.add_argument(
        "--ewc-lambda",
        type=float,
        default=None,
        help="default: 1 / (naive run's ½ΣF(θ-θ*)²), so the naive end point would cost 1 nat/token",
    )
    parser.add_argument("--lora-per-task", action="store_true", help="add the adapter-per-task run (2 more stages)")
    parser.add_argument(
        "--add-lora-per-task",
        action="store_true",
        help="only run the adapter-per-task stages and add them to the saved results",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-continual-") as tmp:
        work = Path(tmp)
        rows = args.steps * args.batch  # one epoch of each task in a stage's steps
        time_train, time_test = write_time_task(work, train=rows, test=args.eval_examples)
        dates = (subset(DATES / "train.jsonl", work / "dates.jsonl", rows),
                 subset(DATES / "test.jsonl", work / "dates_val.jsonl", args.eval_examples))  # fmt: skip
        clock = (time_train.rename(work / "clock.jsonl"), time_test.rename(work / "clock_val.jsonl"))
        if args.add_lora_per_task:
            add_lora_per_task(work, dates, clock, args, started)
            return
        both = [f"continual.replay.fraction={args.replay_fraction}", "continual.replay.buffer_size=400",
                f"continual.ewc.fisher_samples={args.fisher_samples}", "continual.baseline=true"]  # fmt: skip
        first = run("dates", work, dates, MODEL, args, *both)
        stage1 = str(work / "dates")
        results["naive"] = run("clock-naive", work, clock, stage1, args)
        ewc_file = work / "dates" / "dates" / "ewc.safetensors"
        naive_drift = drift(work / "clock-naive", ewc_file)
        lam = args.ewc_lambda or 1.0 / max(naive_drift, 1e-12)
        results["replay"] = run("clock-replay", work, clock, stage1, args, *both[:2])
        results["ewc"] = run("clock-ewc", work, clock, stage1, args, f"continual.ewc.lambda={lam}",
                             f"continual.ewc.fisher_samples={args.fisher_samples}")  # fmt: skip
        ewc_drift = drift(work / "clock-ewc", ewc_file)
        if args.lora_per_task:
            results["lora_per_task"] = run_staged(work, dates, clock, args)
    payload = {"command": " ".join([".venv/bin/python", f"benchmarks/techniques_{NAME}.py", *sys.argv[1:]]),
               "args": vars(args), "ewc_lambda": lam, "drift": {"naive": naive_drift, "ewc": ewc_drift},
               "stage1": first, "results": results, "wall_s": time.perf_counter() - started}  # fmt: skip
    save(NAME, payload)
    write_markdown(payload)


def add_lora_per_task(work: Path, dates: tuple, clock: tuple, args, started: float) -> None:
    """Run the adapter-per-task stages with the saved run's settings and add them to its results files."""
    path = RESULTS / f"techniques_{NAME}.json"
    payload = json.loads(path.read_text())
    saved = argparse.Namespace(**{**payload["args"], "threads": args.threads})
    report = run_staged(work, dates, clock, saved)
    report["command"] = command(NAME)
    payload["results"]["lora_per_task"] = report
    payload["wall_s"] += time.perf_counter() - started
    path.write_text(json.dumps(payload, indent=2))
    write_markdown(payload)


def run_staged(work: Path, dates: tuple, clock: tuple, args) -> dict:
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.recipes.run import run_training

    overrides = [*settings(args), "continual.lora_per_task=true"]
    raw = {"model": {"source": MODEL}, "output": {"dir": str(work), "name": "per-task"},
           "data": {"train": [str(dates[0])], "validation": [str(dates[1])]},
           "stages": [{"name": n, "data": {"train": [str(d[0])], "validation": [str(d[1])]}}
                      for n, d in (("dates", dates), ("clock", clock))]}  # fmt: skip
    cfg = load_config(None, [*overrides, "continual.baseline=true"], base=raw)
    start = time.perf_counter()
    run_training(cfg, console=Console(quiet=True))
    out = Path(raw["output"]["dir"]) / raw["output"]["name"]
    report = json.loads((out / "continual.json").read_text())
    report["wall_s"] = time.perf_counter() - start
    print("per-task", json.dumps(report["full_matrix"]), flush=True)
    return report


LABELS = {"naive": "naive sequential", "replay": "replay", "ewc": "EWC", "lora_per_task": "LoRA per task (routed)"}


def write_markdown(p: dict) -> None:
    a = p["args"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    routed = "lora_per_task" in p["results"]
    base = p["stage1"]["baseline"]  # the start model on dates (clock was not yet a task when it was scored)
    lines = [
        "## Continual learning: naive vs replay vs EWC" + (" vs an adapter per task" if routed else ""),
        "",
        f"Command: `{p['command']}`"
        + (
            f"; the adapter-per-task row: `{p['results']['lora_per_task']['command']}` (its wall time covers both "
            "stages)"
            if routed and "command" in p["results"]["lora_per_task"]
            else ""
        ),
        "",
        f"SmolLM2-135M-Instruct (embedded), LoRA r16/α32 on all linear layers, lr 1e-3, batch {a['batch']}. "
        f"Task 1: dates (examples/dates -> YYYY-MM-DD), task 2: clock times (-> HH:MM, generated, held-out hour/minute "
        f"pairs); {a['steps']} steps per stage on {a['steps'] * a['batch']} rows of the task. Stage 1 ran once; each "
        f"method continued it as a second run (`model.source` = the stage-1 run folder), each with the same "
        f"{a['steps']} steps. "
        f"Replay: {a['replay_fraction']:.0%} of stage 2's rows drawn from the reservoir of stage-1 rows. EWC: "
        f"diagonal Fisher from {a['fisher_samples']} stage-1 examples, λ = {p['ewc_lambda']:.3g} (set so the naive "
        f"run's end point would pay 1 nat/token of penalty; no test data used). "
        + (
            "LoRA per task: a fresh adapter per stage on the frozen base, each task's prompts routed to its adapter. "
            if routed
            else "The adapter-per-task variant (`--lora-per-task`) was not run for this table. "
        )
        + f"Exact match on the first "
        f"{a['eval_examples']} held-out prompts per task, greedy. {p['device']}; 1 thread of a shared 2-core CPU, "
        f"so wall times are upper bounds; whole demo {p['wall_s']:.0f} s.",
        "",
        f"Base model before training: dates {pct(base[0])}%. Each prompt is {100 / a['eval_examples']:.1f} pp of a "
        "task's score, so differences of one or two prompts are noise.",
        "",
        "| method | dates after stage 1 | dates after stage 2 | clock after stage 2 | average accuracy | "
        "forgetting (pp) | backward transfer (pp) | wall s (stage 2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        if key not in p["results"]:
            continue
        r = p["results"][key]
        m = r["full_matrix"]
        lines.append(
            f"| {label} | {pct(m[0][0])} | {pct(m[1][0])} | {pct(m[1][1])} | {pct(r['average_accuracy'])} | "
            f"{100 * r['forgetting']:.1f} | {100 * r['backward_transfer']:+.1f} | {r['wall_s']:.0f} |"
        )
    d, res = p["drift"], p["results"]
    lines += [
        "",
        f"Weighted drift ½ΣF(θ-θ*)² from the stage-1 weights after stage 2: naive {d['naive']:.3g}, "
        f"EWC {d['ewc']:.3g}.",
        "",
        "Reading: "
        + "; ".join(
            f"{LABELS[k]} forgot {100 * r['forgetting']:.1f} pp of dates and reached "
            f"{100 * r['full_matrix'][1][1]:.1f}% on clock"
            for k, r in res.items()
        )
        + f". EWC held the stage-1 weights that the Fisher marks as important {d['naive'] / d['ewc']:.1f}x closer "
        f"than naive training (weighted drift), which "
        + ("did" if res["ewc"]["forgetting"] < res["naive"]["forgetting"] else "did not")
        + " show up as less forgetting of dates at this size."
        + (
            " The routed adapters cannot forget (each task keeps its own adapter), at the price of needing the task "
            "tag with every prompt."
            if "lora_per_task" in res
            else ""
        ),
    ]
    (RESULTS / f"techniques_{NAME}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
