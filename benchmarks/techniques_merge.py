"""Two task adapters merged into one that does both, against each alone (demo).

SmolLM2-135M-Instruct (embedded) learns two skills with one LoRA adapter each: task A, examples/dates (a date in
any form -> YYYY-MM-DD); task B, clock times (a time in words or 12-hour form -> HH:MM, made here, seeded, with
held-out hour/minute pairs). The two adapters are then combined by every `tunelab merge-models` method and, for
comparison, by an output ensemble (probabilities averaged per token, both adapters on one base), and every model
answers the first `--eval-examples` held-out prompts of both tasks greedily. Writes
benchmarks/results/techniques_merge.json and .md.

    .venv/bin/python benchmarks/techniques_merge.py                       # 40 steps per adapter, 48 prompts per task
    .venv/bin/python benchmarks/techniques_merge.py --steps 4 --eval-examples 8   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATES = ROOT / "examples" / "dates"
OUT = ROOT / "benchmarks" / "results" / "techniques_merge.md"
HOUR_WORDS = ["twelve", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
MINUTE_WORDS = {5: "five", 10: "ten", 15: "a quarter", 20: "twenty", 25: "twenty-five", 30: "half"}
REQUESTS = [
    "Give the time in 24-hour format (HH:MM), nothing else.",
    "Convert the time to HH:MM on a 24-hour clock. Reply with the time only.",
    "What time is meant, as HH:MM (24-hour)? Answer with the time alone.",
]
CONTEXTS = ["The meeting starts at {t}.", "Train 402 leaves at {t}, platform 3.", "{t}", "Call me back at {t}, please."]
# name -> (recipe parameters, description). Weights follow each method's usual use: an average for linear, a sum
# of task vectors for the others.
MERGES: dict[str, tuple[dict, str]] = {
    "linear": ({"merge_method": "linear", "weights": [0.5, 0.5]}, "average of the two adapted models"),
    "task_arithmetic": ({"merge_method": "task_arithmetic", "weights": [1.0, 1.0]}, "base + ΔW_A + ΔW_B"),
    "ties": ({"merge_method": "ties", "weights": [1.0, 1.0], "density": 0.5}, "top 50% of each ΔW, sign election"),
    "dare_ties": ({"merge_method": "dare_ties", "weights": [1.0, 1.0], "density": 0.5},
                  "random 50% of each ΔW, rescaled, sign election"),
    "dare_linear": ({"merge_method": "dare_linear", "weights": [1.0, 1.0], "density": 0.5},
                    "random 50% of each ΔW, rescaled, summed"),
}  # fmt: skip


def period(h: int) -> str:
    if 5 <= h < 12:
        return "in the morning"
    if 12 <= h < 18:
        return "in the afternoon"
    return "in the evening" if 18 <= h < 22 else "at night"


def hour_name(h: int) -> str:
    """The hour as said before a period; 12:00 and 0:00 are named outright, so 'twelve' never needs a period."""
    return {12: "noon", 0: "midnight"}.get(h, f"{HOUR_WORDS[h % 12]}")


def time_phrase(rng: random.Random, h: int, m: int) -> str:
    """One way of writing 24-hour time h:m that fixes it unambiguously."""
    style = rng.randrange(3)
    if style == 0:
        suffix = rng.choice([("am", "pm"), ("a.m.", "p.m."), ("AM", "PM")])[h >= 12]
        return f"{h % 12 or 12}:{m:02d} {suffix}"
    if style == 1:
        return f"{h % 12 or 12}:{m:02d} {period(h)}"
    if m == 0:
        return hour_name(h) if h in (0, 12) else f"{hour_name(h)} o'clock {period(h)}"
    target = h if m <= 30 else (h + 1) % 24
    words = f"{MINUTE_WORDS[m]} past" if m <= 30 else f"{MINUTE_WORDS[60 - m]} to"
    return f"{words} {hour_name(target)}" + ("" if target in (0, 12) else f" {period(target)}")


def write_time_task(folder: Path, train: int = 1500, test: int = 150, seed: int = 0) -> tuple[Path, Path]:
    """train.jsonl / test.jsonl of the clock-time task; test hour/minute pairs never appear in training."""
    rng = random.Random(seed)
    pairs = [(h, m) for h in range(24) for m in range(0, 60, 5)]
    held_out = {p for i, p in enumerate(pairs) if i % 7 == 3}
    files = {}
    for split, n, pool in (("train", train, [p for p in pairs if p not in held_out]), ("test", test, sorted(held_out))):
        path = folder / f"time_{split}.jsonl"
        with path.open("w") as fh:
            for _ in range(n):
                h, m = rng.choice(pool)
                text = rng.choice(CONTEXTS).format(t=time_phrase(rng, h, m))
                row = {"messages": [{"role": "user", "content": f"{rng.choice(REQUESTS)}\n\n{text}"},
                                    {"role": "assistant", "content": f"{h:02d}:{m:02d}"}]}  # fmt: skip
                fh.write(json.dumps(row) + "\n")
        files[split] = path
    return files["train"], files["test"]


def train_adapter(name: str, train: Path, steps: int, work: Path) -> Path:
    """A LoRA adapter trained on `train` (no validation split: the demo scores held-out answers itself)."""
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.recipes.run import run_training

    cfg = load_config(None, [
        f"data.train={train}", "data.val_fraction=0", "model.source=smollm2-135m", "method=lora", "method.r=16",
        "method.alpha=32", "training.learning_rate=1e-3", "training.batch_size=16", f"training.max_steps={steps}",
        "eval.baseline=false", "eval.generate=false", f"output.dir={work}", f"output.name={name}",
        "output.overwrite=true",
    ])  # fmt: skip
    result = run_training(cfg, console=Console(quiet=True))
    return result.run_dir


def score(model, tokenizer, examples: dict[str, list], batch_size: int) -> dict[str, float]:
    from tunelab.eval.evaluate import generation_metrics

    return {
        task: generation_metrics(model, tokenizer, exs, max_examples=None, max_new_tokens=12, batch_size=batch_size,
                                 precision="bf16", show_progress=False)[0]["exact_match"]
        for task, exs in examples.items()
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per adapter (batch 16)")
    parser.add_argument("--eval-examples", type=int, default=48, help="held-out prompts per task")
    parser.add_argument("--eval-batch", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from peft import PeftModel

    from tunelab.data.load import load_examples
    from tunelab.export.ensemble.model import EnsembleModel
    from tunelab.export.merging.config import parse_merge_config
    from tunelab.export.merging.merge import merge_models
    from tunelab.models.load import load_model, load_tokenizer

    torch.manual_seed(0)
    started = time.perf_counter()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-merge-demo-") as tmp:
        work = Path(tmp)
        time_train, time_test = write_time_task(work)
        examples = {
            "dates": load_examples([str(DATES / "test.jsonl")]).examples[: args.eval_examples],
            "times": load_examples([str(time_test)]).examples[: args.eval_examples],
        }
        tokenizer = load_tokenizer("smollm2-135m")
        start = time.perf_counter()
        runs = {"dates": train_adapter("dates", DATES / "train.jsonl", args.steps, work),
                "times": train_adapter("times", time_train, args.steps, work)}  # fmt: skip
        train_s = time.perf_counter() - start

        def evaluate(name: str, model, what: str) -> None:
            t0 = time.perf_counter()
            rows[name] = {
                "what": what,
                **score(model, tokenizer, examples, args.eval_batch),
                "eval_s": time.perf_counter() - t0,
            }
            print(name, rows[name], flush=True)

        evaluate("base model", load_model("smollm2-135m"), "no training")
        for task, run in runs.items():
            evaluate(f"{task} adapter alone", PeftModel.from_pretrained(load_model("smollm2-135m"), run / "adapter"),
                     f"LoRA r16, {args.steps} steps on {task}")  # fmt: skip
        for name, (spec, what) in MERGES.items():
            params = {k: spec[k] for k in ("density",) if k in spec}
            recipe = {"merge_method": spec["merge_method"], "base_model": "smollm2-135m", "parameters": params,
                      "models": [{"model": str(run), "parameters": {"weight": w}}
                                 for run, w in zip(runs.values(), spec["weights"], strict=True)]}  # fmt: skip
            report = merge_models(parse_merge_config(recipe), work / f"merged-{name}")
            base = load_model("smollm2-135m")
            model = (
                PeftModel.from_pretrained(base, report.out) if report.kind == "adapter" else load_model(str(report.out))
            )
            evaluate(name, model, f"{what} -> {report.kind}")
        ensemble = EnsembleModel.from_adapters(load_model("smollm2-135m"), [r / "adapter" for r in runs.values()])
        evaluate("ensemble (probs)", ensemble, "both adapters on one base, next-token probabilities averaged")
    write_table(rows, args, train_s, time.perf_counter() - started)


def write_table(rows: dict[str, dict], args: argparse.Namespace, train_s: float, total_s: float) -> None:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    device += f", {torch.get_num_threads()} thread(s)"
    lines = [
        "## Merging two task adapters",
        "",
        f"SmolLM2-135M-Instruct (embedded). Task A: examples/dates (-> YYYY-MM-DD); task B: clock times (-> HH:MM, "
        f"held-out hour/minute pairs). One LoRA adapter (r 16, all linear layers) per task, {args.steps} steps of "
        f"16 examples, lr 1e-3 (training both: {train_s:.0f} s). Exact match on the first {args.eval_examples} "
        f"held-out prompts of each task, greedy, bf16 autocast. Device: {device}; torch {torch.__version__}; "
        f"whole demo {total_s:.0f} s. Runs used 1 thread on a shared 2-core CPU, so wall times are upper bounds.",
        "",
        "Command: `.venv/bin/python benchmarks/techniques_merge.py "
        f"--steps {args.steps} --eval-examples {args.eval_examples} --eval-batch {args.eval_batch} "
        f"--threads {args.threads}`",
        "",
        "| model | what | dates EM | times EM | mean | eval s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        mean = (r["dates"] + r["times"]) / 2
        lines.append(f"| {name} | {r['what']} | {r['dates']:.1%} | {r['times']:.1%} | {mean:.1%} | {r['eval_s']:.0f} |")
    lines += ["", reading(rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": rows,
               "train_s": train_s, "total_s": total_s, "device": device, "torch": torch.__version__}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print("\n".join(lines))


def reading(rows: dict[str, dict]) -> str:
    """One sentence from the numbers: the best merge's scores against each adapter alone on its own task."""
    merged = {name: r for name, r in rows.items() if name in MERGES}
    best = max(merged, key=lambda n: merged[n]["dates"] + merged[n]["times"])
    dates_alone, times_alone = rows["dates adapter alone"], rows["times adapter alone"]
    ens = rows["ensemble (probs)"]
    return (
        f"Reading: the best merge here is {best} ({merged[best]['dates']:.1%} dates / {merged[best]['times']:.1%} "
        f"times), against {dates_alone['dates']:.1%} for the dates adapter on dates and {times_alone['times']:.1%} "
        f"for the times adapter on times; each adapter alone scores {dates_alone['times']:.1%} (dates adapter) and "
        f"{times_alone['dates']:.1%} (times adapter) on the other task, and the probability ensemble "
        f"{ens['dates']:.1%} / {ens['times']:.1%}."
    )


if __name__ == "__main__":
    main()
