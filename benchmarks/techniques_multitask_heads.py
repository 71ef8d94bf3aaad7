"""Multi-task classification with task heads: one MiniLM body (LoRA) with a head per task against one single-task
classifier per task, on two tasks with different label sets.

Tasks: `topic` (examples/classify: sport, cooking, computers or travel; 4 classes; the test set's things never
occur in training) and `sentiment` (generated here from a fixed seed: positive, negative or neutral, said by the
verb phrase; 3 classes; test sentences use verb phrases that no training sentence uses). Every model sees each of
its tasks' training rows `--epochs` times: a single-task model trains on its task, the multi-task model on both
at once (`objective.task_heads: true`), with equal fixed weights or learned uncertainty weights. Accuracy and
macro-F1 per task on the held-out test sets (mean over `--seeds` training seeds, with the range), trainable
parameters, wall time.

    .venv/bin/python benchmarks/techniques_multitask_heads.py
    .venv/bin/python benchmarks/techniques_multitask_heads.py --smoke     # tiny sizes, results under the temp folder
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from techniques_common import ROOT, command, results_dir, save, train, write_jsonl, write_section

NAME = "multitask_heads"
MODEL = "minilm-l6"
TOPIC = ROOT / "examples" / "classify"
PEOPLE = ["I", "We", "My sister", "The team", "Our neighbour", "Everyone", "The new manager", "My uncle"]
THINGS = ["the football match", "fresh pasta", "the new laptop", "the hotel booking", "a lemon cake",
          "the wifi router", "a road trip", "tennis practice", "the spreadsheet macros", "a train ticket"]  # fmt: skip
PHRASES = {
    "positive": {"train": ["loved", "really enjoyed", "was thrilled with", "praised", "was very happy with",
                           "raved about"],
                 "test": ["adored", "was delighted with", "could not get enough of"]},
    "negative": {"train": ["hated", "was disappointed by", "regretted", "was furious about", "could not stand",
                           "was upset about"],
                 "test": ["despised", "was annoyed by", "was fed up with"]},
    "neutral": {"train": ["mentioned", "read about", "asked about", "wrote a note about", "talked about",
                          "looked up"],
                "test": ["heard about", "made a list about", "checked"]},
}  # fmt: skip
ENDINGS = ["", " yesterday", " at lunch", " on the phone", " last week"]


def sentiment_rows(n: int, split: str, seed: int) -> list[dict]:
    """Sentences whose verb phrase alone says the sentiment; labels cycle so the classes are balanced."""
    rng = random.Random(seed)
    labels = sorted(PHRASES)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        phrase = rng.choice(PHRASES[label][split])
        text = f"{rng.choice(PEOPLE)} {phrase} {rng.choice(THINGS)}{rng.choice(ENDINGS)}."
        out.append({"text": text, "label": label})
    return out


def topic_rows(split: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (TOPIC / f"{split}.jsonl").read_text().splitlines()][:n]


def write_tasks(work: Path, args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    """task -> (train file, test file); a test file has its task's stem, so its rows carry the same task tag."""
    return {
        "topic": (write_jsonl(work / "train" / "topic.jsonl", topic_rows("train", args.train)),
                  write_jsonl(work / "test" / "topic.jsonl", topic_rows("test", args.test))),
        "sentiment": (write_jsonl(work / "train" / "sentiment.jsonl", sentiment_rows(args.train, "train", 0)),
                      write_jsonl(work / "test" / "sentiment.jsonl", sentiment_rows(args.test, "test", 1))),
    }  # fmt: skip


MODELS = {
    "single: topic": (["topic"], []),
    "single: sentiment": (["sentiment"], []),
    "multi-task heads, equal weights": (["topic", "sentiment"], ["objective.task_heads=true"]),
    "multi-task heads, uncertainty weights": (
        ["topic", "sentiment"], ["objective.task_heads=true", "training.task_weighting=uncertainty"]
    ),
}  # fmt: skip


METRICS = ("acc/topic", "macro_f1/topic", "acc/sentiment", "macro_f1/sentiment")


def run_model(name: str, tasks: list[str], extra: list[str], files: dict, work: Path, args, seed: int) -> dict:
    from tunelab.methods.base import trainable_parameters
    from tunelab.train.metrics import read_metrics

    folder = name.replace(":", "").replace(",", "").replace(" ", "-")
    result, seconds = train(folder, work, [f"training.seed={seed}",
        f"data.train=[{','.join(str(files[t][0]) for t in tasks)}]",
        f"data.validation=[{','.join(str(files[t][1]) for t in tasks)}]", "data.max_length=64",
        "method=lora", "method.r=8", "method.alpha=16", "objective=classify", "objective.pooling=mean",
        f"training.epochs={args.epochs}", "training.batch_size=16", "training.learning_rate=1e-3",
        "training.head_lr=1e-2", f"training.num_threads={args.threads}", "training.log_every=5", *extra,
    ], model=MODEL)  # fmt: skip
    final = result.final
    row = {"tasks": tasks, "steps": final["steps"], "trainable_params": trainable_parameters(result.model)[0],
           "wall_s": seconds}  # fmt: skip
    for task in tasks:  # a single-task run reports plain val_acc; a task-heads run val_acc/<task> per task
        suffix = f"/{task}" if len(tasks) > 1 else ""
        row[f"acc/{task}"] = final[f"val_acc{suffix}"]
        row[f"macro_f1/{task}"] = final[f"val_macro_f1{suffix}"]
    last = [m for m in read_metrics(result.run_dir) if "task_weight/topic" in m]
    if last:
        row["learned_task_weights"] = {t: last[-1][f"task_weight/{t}"] for t in tasks}
    print(name, f"seed {seed}", json.dumps(row), flush=True)
    return row


def summary(runs: list[dict]) -> dict:
    """Mean and range over seeds of each metric; steps and parameters (the same for every seed); mean wall time."""
    out = {"steps": runs[0]["steps"], "trainable_params": runs[0]["trainable_params"],
           "wall_s": sum(r["wall_s"] for r in runs) / len(runs)}  # fmt: skip
    for key in METRICS:
        if key in runs[0]:
            values = [r[key] for r in runs]
            out[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    weights = [r["learned_task_weights"] for r in runs if "learned_task_weights" in r]
    if weights:
        out["learned_task_weights"] = {t: sum(w[t] for w in weights) / len(weights) for t in weights[0]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200, help="training rows per task")
    parser.add_argument("--test", type=int, default=80, help="held-out rows per task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per model (data stay the same)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; results go under the temp folder")
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.rewrite:
        write_section(NAME, markdown(json.loads((results_dir(False) / f"techniques_{NAME}.json").read_text())))
        return
    if args.smoke:
        args.train, args.test, args.epochs, args.seeds = 32, 12, 1, 1

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunelab-multitask-heads-") as tmp:
        files = write_tasks(Path(tmp), args)
        runs = {name: [run_model(name, t, extra, files, Path(tmp), args, seed) for seed in range(args.seeds)]
                for name, (t, extra) in MODELS.items()}  # fmt: skip
    results = {name: summary(rows) for name, rows in runs.items()}
    payload = {"args": vars(args), "results": results, "runs": runs, "wall_s": time.perf_counter() - started}
    out = results_dir(args.smoke)
    save(NAME, payload, out)
    write_section(NAME, markdown({**payload, "command": command(NAME)}), out)


def markdown(p: dict) -> list[str]:
    a, r = p["args"], p["results"]
    cell = lambda m: f"{100 * m['mean']:.1f} ({100 * m['min']:.1f}–{100 * m['max']:.1f})"  # noqa: E731
    singles = [r["single: topic"], r["single: sentiment"]]
    lines = [
        "## Multi-task classification: task heads on one body vs one model per task",
        "",
        f"Command: `{p['command']}`",
        "",
        f"all-MiniLM-L6-v2 (embedded) as the body, LoRA r8/α16 on all linear layers, mean pooling, a full linear "
        f"head per task (lr 1e-3, heads 1e-2), batch 16, {a['epochs']} epoch(s) over each model's rows. Two tasks with "
        f"different label sets, {a['train']} training and {a['test']} held-out rows each: topic (examples/classify, "
        "4 classes; test things never occur in training) and sentiment (generated by the script, 3 classes said by "
        "the verb phrase; test phrases never occur in training). Single-task models train on their task; the "
        "multi-task model (`objective.task_heads: true`) on both, each row routed to its task's head, with equal "
        "fixed weights or learned uncertainty weights (`training.task_weighting: uncertainty`). Accuracy and "
        f"macro-F1 (%) on the held-out rows: mean over {a['seeds']} training seed(s) (initialisation and batch "
        "order; same data), range in brackets. Wall time per model (mean over seeds) includes loading and "
        "evaluation.",
        "",
        "| model | steps | topic acc | topic macro-F1 | sentiment acc | sentiment macro-F1 | trainable | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r.items():
        cells = [cell(row[k]) if k in row else "–" for k in METRICS]
        lines.append(f"| {name} | {row['steps']} | {' | '.join(cells)} | {row['trainable_params']:,} | "
                     f"{row['wall_s']:.0f} |")  # fmt: skip
    both = {k: sum(s[k] for s in singles) for k in ("steps", "trainable_params", "wall_s")}
    lines.append(f"| both single models together | {both['steps']} | | | | | {both['trainable_params']:,} | "
                 f"{both['wall_s']:.0f} |")  # fmt: skip
    lines += ["", reading(p, both)]
    return lines


def reading(p: dict, both: dict) -> str:
    """What moved and what did not, from the numbers (a difference inside the seed ranges is called so)."""
    r = p["results"]
    multi, weighted = r["multi-task heads, equal weights"], r["multi-task heads, uncertainty weights"]
    text = (
        f"Reading: one body with two heads holds {multi['trainable_params']:,} trainable parameters against "
        f"{both['trainable_params']:,} for the two single-task models (one body to store and serve instead of two), "
        f"and trains in about the time of both ({multi['wall_s']:.0f} s vs {both['wall_s']:.0f} s)."
    )
    for task in ("topic", "sentiment"):
        single = r[f"single: {task}"][f"acc/{task}"]
        parts = []
        for label, row in (("equal weights", multi), ("uncertainty weights", weighted)):
            m = row[f"acc/{task}"]
            apart = m["min"] > single["max"] or m["max"] < single["min"]
            parts.append(
                f"{label} {100 * m['mean']:.1f}% ({100 * (m['mean'] - single['mean']):+.1f} points, "
                f"seed ranges {'apart' if apart else 'overlap'})"
            )
        text += f" {task.capitalize()} accuracy: single-task {100 * single['mean']:.1f}%, " + "; ".join(parts) + "."
    weights = weighted.get("learned_task_weights", {})
    text += (
        " The learned weights exp(-s_t) stayed near 1 ("
        + ", ".join(f"{t} {w:.2f}" for t, w in weights.items())
        + f"; the s_t train at the body's learning rate, 1e-3, for {weighted['steps']} steps), so the weights "
        "themselves did little: that run differs from equal weights mainly in how it sums (each task's mean loss "
        f"counts once per batch, where equal weights count every row once). Whole demo {p['wall_s']:.0f} s."
    )
    return text


if __name__ == "__main__":
    main()
