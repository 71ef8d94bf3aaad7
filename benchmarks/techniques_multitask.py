"""Multi-task learning: one LoRA adapter trained on two tasks at once (dates and clock times, mixed by the data
schedule; fixed equal weights, or uncertainty-weighted task losses) against one single-task adapter per task.

Every model sees each task's rows once: a single-task model trains `--steps` steps on its task, a multi-task
model 2 x `--steps` steps on both. SmolLM2-135M-Instruct (embedded), LoRA r16 on all linear layers; exact match,
greedy, on held-out prompts of both tasks.

    .venv/bin/python benchmarks/techniques_multitask.py                # 16 steps of 8 per task, 24 prompts per task
    .venv/bin/python benchmarks/techniques_multitask.py --steps 2 --eval-examples 4   # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from techniques_common import DATES, MODEL, RESULTS, save
from techniques_continual import subset
from techniques_merge import write_time_task

NAME = "multitask"
MODELS = {
    "single: dates": (["dates"], []),
    "single: clock": (["clock"], []),
    "multi-task, fixed equal weights": (["dates", "clock"], []),
    "multi-task, uncertainty weights": (["dates", "clock"], ["training.task_weighting=uncertainty"]),
}


def train_and_score(name: str, tasks: list[str], extra: list[str], files: dict, work: Path, args) -> dict:
    import torch
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.core.device import use_bf16
    from tunelab.models.load import load_tokenizer
    from tunelab.recipes.continual.tasks import exact_match, read_examples
    from tunelab.recipes.run import run_training

    folder = name.replace(":", "").replace(",", "").replace(" ", "-")
    train = ",".join(str(files[t][0]) for t in tasks)
    val = ",".join(str(files[t][1]) for t in files)  # every model is validated on both tasks
    cfg = load_config(None, [
        f"model.source={MODEL}", f"data.train=[{train}]", f"data.validation=[{val}]", "data.max_length=256",
        "data.schedule.sampling=mixture", "method=lora", "method.r=16", "method.alpha=32",
        "training.learning_rate=1e-3", f"training.batch_size={args.batch}",
        f"training.max_steps={args.steps * len(tasks)}",
        f"training.num_threads={args.threads}", "training.log_every=5", "eval.baseline=false", "eval.generate=false",
        f"output.dir={work}", f"output.name={folder}", "output.overwrite=true", *extra,
    ])  # fmt: skip
    start = time.perf_counter()
    result = run_training(cfg, console=Console(quiet=True))
    train_s = time.perf_counter() - start
    tokenizer = load_tokenizer(MODEL)
    bf16 = use_bf16("auto", torch.device("cpu"))
    row = {"tasks": tasks, "steps": args.steps * len(tasks), "train_s": train_s}
    for task, (_, val_file) in files.items():
        row[f"exact_match/{task}"] = exact_match(
            result.model, tokenizer, read_examples(val_file), max_examples=args.eval_examples, max_new_tokens=12,
            batch_size=16, system_prompt=None, bf16=bf16,
        )  # fmt: skip
        row[f"val_loss/{task}"] = result.final.get(f"val_loss/{task}")
    print(name, json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per task")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--eval-examples", type=int, default=24, help="held-out prompts per task")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunelab-multitask-") as tmp:
        work = Path(tmp)
        rows = args.steps * args.batch
        time_train, time_test = write_time_task(work, train=rows, test=args.eval_examples)
        (work / "val").mkdir()
        # Validation files share their task's stem, so per-task validation metrics carry the task's tag.
        files = {
            "dates": (subset(DATES / "train.jsonl", work / "dates.jsonl", rows),
                      subset(DATES / "test.jsonl", work / "val" / "dates.jsonl", args.eval_examples)),
            "clock": (time_train.rename(work / "clock.jsonl"), time_test.rename(work / "val" / "clock.jsonl")),
        }  # fmt: skip
        results = {name: train_and_score(name, t, extra, files, work, args) for name, (t, extra) in MODELS.items()}
    payload = {
        "command": " ".join([".venv/bin/python", f"benchmarks/techniques_{NAME}.py", *sys.argv[1:]]),
        "args": vars(args),
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    save(NAME, payload)
    write_markdown(payload)


def write_markdown(p: dict) -> None:
    a, r = p["args"], p["results"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    loss = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "## Multi-task vs single-task adapters",
        "",
        f"Command: `{p['command']}`",
        "",
        f"SmolLM2-135M-Instruct (embedded), LoRA r16/α32 on all linear layers, lr 1e-3, batch {a['batch']}. "
        f"Tasks: dates (examples/dates -> YYYY-MM-DD) and clock times (-> HH:MM, generated, held-out hour/minute "
        f"pairs), "
        f"{a['steps'] * a['batch']} training rows each. Single-task adapters train {a['steps']} steps on their task; "
        f"multi-task adapters {2 * a['steps']} steps on both (each row once), mixed by the data schedule "
        f"(`data.schedule.sampling: mixture`, natural shares), with equal fixed weights or uncertainty weighting "
        f"(`training.task_weighting: uncertainty`, Kendall et al. 2018). Exact match on the first "
        f"{a['eval_examples']} held-out prompts per task, greedy; validation loss per task from the run's eval.json "
        f"(multi-task runs report it per task). {p['device']}; 1 thread of a shared 2-core CPU, so wall times are "
        f"upper bounds; whole demo {p['wall_s']:.0f} s.",
        "",
        "| model | steps | dates exact match | clock exact match | mean | val loss dates | val loss clock | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r.items():
        d, c = row["exact_match/dates"], row["exact_match/clock"]
        lines.append(
            f"| {name} | {row['steps']} | {pct(d)} | {pct(c)} | {pct((d + c) / 2)} | "
            f"{loss(row['val_loss/dates'])} | {loss(row['val_loss/clock'])} | {row['train_s']:.0f} |"
        )
    best_single = {t: r[f"single: {t}"][f"exact_match/{t}"] for t in ("dates", "clock")}
    multi = r["multi-task, fixed equal weights"]
    gap = max(
        abs(r[m][f"val_loss/{t}"] - r[f"single: {t}"][f"val_loss/{t}"])
        for m in r
        if m.startswith("multi")
        for t in ("dates", "clock")
    )
    lines += [
        "",
        f"Reading: each single-task adapter on its own task: dates {pct(best_single['dates'])}%, clock "
        f"{pct(best_single['clock'])}%; the fixed-weight multi-task adapter: dates {pct(multi['exact_match/dates'])}%, "
        f"clock {pct(multi['exact_match/clock'])}%, one adapter for both. Each prompt is "
        f"{100 / a['eval_examples']:.1f} pp, so a difference of one or two prompts is noise; on validation loss each "
        f"multi-task adapter is within {gap:.3f} of the single-task adapter on that task.",
    ]
    (RESULTS / f"techniques_{NAME}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
