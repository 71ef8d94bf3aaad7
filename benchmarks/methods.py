"""Every adaptation method on the embedded SmolLM2-135M-Instruct, one task, one fixed budget.

Task: examples/dates (answer with an ISO date; 2,000 train rows, 200 held-out). Each method trains for the same
number of optimizer steps at the same batch size, with a learning rate suited to it, then answers the first
`--eval-examples` held-out prompts greedily. The table (benchmarks/results/methods.md) gives held-out exact match
and token F1, validation loss, trainable parameters, wall time (training + evaluation), training throughput and
peak memory (resident set on CPU, allocated memory on CUDA). Exact match carries its 95% bootstrap interval, and
rows measured with their per-example answers a McNemar test against lora on the same prompts; the rows live in
benchmarks/results/methods.json, so `--only NAME` measures one method and keeps the others.

Each method runs in its own process, so peak memory is its own and a failure (e.g. qlora without a GPU) becomes
a row, not a crash.

    .venv/bin/python benchmarks/methods.py                                   # every method, 60 steps
    .venv/bin/python benchmarks/methods.py --steps 4 --eval-examples 8 --only lora ia3   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from techniques_common import interval_cell, mean_interval, overlap_note, paired_cell, rate_interval

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "dates" / "config.yaml"
OUT = ROOT / "benchmarks" / "results" / "methods.md"
ROWS = OUT.with_suffix(".json")
BASE = "base model"

# name -> (what it is, config overrides). Learning rates follow each method's usual range for a short run.
METHODS: dict[str, tuple[str, list[str]]] = {
    "full": ("every weight", ["method=full", "training.learning_rate=5e-5"]),
    "freeze": ("top 4 of 30 layers", ["method=freeze", "method.top_k_layers=4", "training.learning_rate=2e-4"]),
    "full+llrd": ("every weight, layer LR decay 0.9", ["method=full", "training.layer_lr_decay=0.9",
                                                       "training.learning_rate=1e-4"]),
    "lora": ("r 16, all linear", ["method=lora", "method.r=16", "method.alpha=32", "training.learning_rate=1e-3"]),
    "rslora": ("r 16, alpha/sqrt(r)", ["method=lora", "method.r=16", "method.alpha=16", "method.rslora=true",
                                       "training.learning_rate=1e-3"]),
    "lora+": ("r 16, B at 16x LR", ["method=lora", "method.r=16", "training.loraplus_lr_ratio=16",
                                    "training.learning_rate=2e-4"]),
    "dora": ("r 16, all linear", ["method=dora", "method.r=16", "training.learning_rate=1e-3"]),
    "pissa": ("r 16, principal init", ["method=lora", "method.r=16", "method.init=pissa",
                                       "training.learning_rate=2e-4"]),
    "olora": ("r 16, QR init", ["method=lora", "method.r=16", "method.init=olora", "training.learning_rate=2e-4"]),
    "ia3": ("k, v, down scales", ["method=ia3", "training.learning_rate=1e-2"]),
    "prefix": ("16 virtual key/values", ["method=prefix", "method.num_virtual_tokens=16",
                                          "training.learning_rate=1e-2"]),
    "prompt": ("16 virtual tokens", ["method=prompt", "method.num_virtual_tokens=16", "training.learning_rate=3e-2"]),
    "p-tuning": ("16 tokens, MLP encoder", ["method=prompt", "method.num_virtual_tokens=16", "method.encoder=mlp",
                                             "training.learning_rate=1e-3"]),
    "adapter": ("Houlsby, width 32", ["method=adapter", "method.bottleneck=32", "training.learning_rate=1e-3"]),
    "hybrid": ("LoRA q,v r 16 + top layer", ["method=hybrid", "method.lora.r=16",
                                             "method.lora.target_modules=[q_proj,v_proj]", "method.top_k_layers=1",
                                             "training.learning_rate=5e-4"]),
    "qlora": ("r 16 on a 4-bit base", ["method=qlora", "method.r=16", "training.learning_rate=1e-3"]),
    "gradual": ("top 4 layers, one more every 2 steps", ["method=freeze", "method.top_k_layers=4",
                                                         "method.unfreeze_every=2", "method.unfreeze_unit=steps",
                                                         "training.learning_rate=2e-4"]),
}  # fmt: skip
REFERENCE = "lora"
"""The row every other's per-example exact matches are tested against (McNemar)."""


def _config(name: str, steps: int, eval_examples: int, out_dir: Path):
    from tunelab.config import load_config

    return load_config(TASK, [
        *METHODS.get(name, ("", []))[1], f"training.max_steps={steps}", "training.log_every=5",
        f"eval.max_examples={eval_examples}", "eval.baseline=false", "eval.max_new_tokens=16",
        f"output.dir={out_dir}", f"output.name={name}", "output.overwrite=true",
    ])  # fmt: skip


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def run_base(eval_examples: int, out_dir: Path) -> dict:
    """The untrained model on the same held-out prompts (run.py's own evaluation, without training)."""
    import torch

    from tunelab.core.device import use_bf16
    from tunelab.data.pipeline import prepare_chat_data
    from tunelab.methods.base import trainable_parameters
    from tunelab.models.load import load_model, load_tokenizer, resolve_source
    from tunelab.objectives.registry import OBJECTIVES
    from tunelab.recipes.run import evaluate

    cfg = _config("base", 1, eval_examples, out_dir)
    source = resolve_source(cfg.model.source)
    tokenizer = load_tokenizer(source)
    run_dir = out_dir / "base"
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_chat_data(cfg.data, tokenizer, cfg.training.seed, run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(cfg.training.precision, device)
    start = time.perf_counter()
    model = load_model(source, dtype=torch.bfloat16 if bf16 else torch.float32).to(device)
    final = evaluate(model, OBJECTIVES["sft"], tokenizer, data, cfg, device, bf16, run_dir / "predictions.jsonl")
    _, total = trainable_parameters(model)
    return {"final": final, "trainable": 0, "total": total, "wall_s": time.perf_counter() - start,
            "tokens_per_s": None, "peak_mb": _peak_mb(), "exact": _exact(run_dir)}  # fmt: skip


def _exact(run_dir: Path) -> list[float]:
    """Each held-out prompt's exact match, from the run's predictions.jsonl."""
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return [float(json.loads(x)["exact_match"]) for x in lines if x.strip()]


def run_one(name: str, steps: int, eval_examples: int, out_dir: Path) -> dict:
    """Train and evaluate one method in this process; returns its row."""
    from rich.console import Console

    from tunelab.methods.base import trainable_parameters
    from tunelab.recipes.run import run_training

    cfg = _config(name, steps, eval_examples, out_dir)
    start = time.perf_counter()
    result = run_training(cfg, console=Console(quiet=True))
    wall = time.perf_counter() - start
    trainable, total = trainable_parameters(result.model)
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    return {
        "final": result.final, "trainable": trainable, "total": total, "wall_s": wall,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None, "peak_mb": _peak_mb(),
        "exact": _exact(result.run_dir),
    }  # fmt: skip


def child(args: argparse.Namespace) -> None:
    try:
        work = Path(args.work)
        row = (
            run_base(args.eval_examples, work)
            if args.child == BASE
            else run_one(args.child, args.steps, args.eval_examples, work)
        )
    except Exception as exc:  # any failure becomes the method's row
        row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    Path(args.result).write_text(json.dumps(row))


def exact_cells(row: dict, reference: dict | None) -> tuple[str, str]:
    """Exact match with its interval, and the paired test against the reference row (or why there is none)."""
    n = row.get("n") or len(row.get("exact", [])) or 1
    if not row.get("exact"):
        return interval_cell(rate_interval(row["final"].get("exact_match", 0), n)), "answers not kept"
    cell = mean_interval(row["exact"])
    if reference is None or row is reference or not reference.get("exact"):
        return cell, ""
    if len(reference["exact"]) != len(row["exact"]):
        return cell, "other prompts"
    return cell, paired_cell(reference["exact"], row["exact"])[0]


def table(rows: dict[str, dict], args: argparse.Namespace) -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    reference = rows.get(REFERENCE)
    lines = [
        "# Adaptation methods on one task",
        "",
        f"SmolLM2-135M-Instruct (embedded) on examples/dates: {args.steps} optimizer steps of 16 examples each, "
        f"then greedy answers to the first {args.eval_examples} held-out prompts. Device: {device}; torch "
        f"{torch.__version__}. Written by `benchmarks/methods.py` (rerun it to refresh). Exact match: 95% bootstrap "
        f"interval; `vs {REFERENCE}`: McNemar's test on the same prompts (exact binomial under 25 disagreements), "
        "possible only for rows whose per-example answers were kept.",
        "",
        f"| method | setup | exact match | vs {REFERENCE} (paired) | token F1 | val loss | trainable params | "
        "% of model | wall s | train tok/s | peak MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        setup = METHODS[name][0] if name in METHODS else "no training (evaluation only)"
        if "error" in row:
            lines.append(f"| {name} | {setup} | not run: {row['error']} | | | | | | | | |")
            continue
        f = row["final"]
        speed = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else ""
        exact, paired = exact_cells(row, reference)
        lines.append(
            f"| {name} | {setup} | {exact} | {paired} | {f.get('token_f1', 0):.1%} | "
            f"{f.get('val_loss', float('nan')):.3f} | {row['trainable']:,} | {row['trainable'] / row['total']:.2%} | "
            f"{row['wall_s']:.0f} | {speed} | {row['peak_mb']:,.0f} |"
        )
    notes = [f"{name}: {row['note']}." for name, row in rows.items() if row.get("note")]
    command = (
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/methods.py --steps {args.steps} --eval-examples "
        f"{args.eval_examples}` (rows kept in methods.json; `--only NAME` measures one). The machine was shared "
        "with other jobs, so wall times and tokens/s are upper and lower bounds; peak MB includes generation."
    )
    return "\n".join([*lines, "", noise(rows), "", *notes, "", command]) + "\n"


def noise(rows: dict[str, dict]) -> str:
    """What the intervals allow one to say about the rows, most of which were kept only as rates."""
    n = {r.get("n") for r in rows.values() if "final" in r}
    if REFERENCE not in rows or "final" not in rows[REFERENCE] or len(n) != 1:
        return ""
    args_n = n.pop()
    kept = {k: r["final"]["exact_match"] for k, r in rows.items() if "final" in r}
    ref = rate_interval(kept[REFERENCE], args_n)
    return (
        f"Reading the intervals: on {args_n} prompts one prompt is {100 / args_n:.1f} points, and {REFERENCE}'s "
        f"exact match is known to ±{50 * (ref['high'] - ref['low']):.0f} points. "
        + overlap_note(kept, args_n, REFERENCE)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per method")
    parser.add_argument("--eval-examples", type=int, default=100, help="held-out prompts answered per method")
    parser.add_argument("--only", nargs="*", choices=list(METHODS), help="run only these methods")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown table to write")
    parser.add_argument("--rows", type=Path, help="keep each method's row here; rows already there are reused")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from methods.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows: dict[str, dict] = json.loads(ROWS.read_text()) if ROWS.is_file() and args.out == OUT else {}
    if args.table:
        args.out.write_text(table(rows, args))
        return
    with tempfile.TemporaryDirectory(prefix="tunelab-methods-") as work:
        keep = args.rows or Path(work)
        keep.mkdir(parents=True, exist_ok=True)
        for name in [BASE, *(args.only or METHODS)]:
            result = keep / f"{name}.json"
            if result.is_file() or (args.only and name not in args.only and name in rows):
                rows[name] = json.loads(result.read_text()) if result.is_file() else rows[name]
                continue  # measured by an earlier run of this benchmark
            cmd = [sys.executable, __file__, "--child", name, "--result", str(result), "--work", work,
                   "--steps", str(args.steps), "--eval-examples", str(args.eval_examples)]  # fmt: skip
            subprocess.run(cmd, check=False)
            rows[name] = json.loads(result.read_text()) if result.is_file() else {"error": "the process died"}
            rows[name]["n"] = args.eval_examples
            print(f"{name}: {rows[name].get('error') or rows[name]['final']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out == OUT:
        ROWS.write_text(json.dumps(rows, indent=1) + "\n")
    args.out.write_text(table(rows, args))
    print(table(rows, args))


if __name__ == "__main__":
    main()
