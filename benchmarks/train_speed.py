"""LoRA SFT speed and memory: tunelab vs TRL's SFTTrainer + peft, side by side, on identical data and settings.

    python benchmarks/train_speed.py                 # short (~60-token) and long (~500-token) chat examples
    python benchmarks/train_speed.py --only short    # one of them

Each framework trains in its own subprocess (so peak memory is its own) on the embedded SmolLM2-135M-Instruct:
LoRA r=16, alpha=32, no dropout, all linear layers, AdamW, lr 1e-3 cosine with 5% warmup, max grad norm 1,
bf16 on, loss on the answer tokens only, one epoch over the same examples in the same batch size, and the same
batches in the same order: TRL reads the rows in sequence (`train_sampling_strategy="sequential"`) from a dataset
laid out in the order of tunelab's seeded, length-grouped shuffle, so the two take the same optimizer steps and
their final losses differ by numerics only. TRL keeps its defaults otherwise (gradient checkpointing included).
Both final models are scored by the same code (tunelab's token-averaged validation loss on the same tokenized
validation set), so "same final loss" compares like with like. "Long" rows are ~740 tokens with this tokenizer.

How FLOPs are counted (per training token of a sequence of length T, model width d, L layers):
  frozen matmuls: 2·N forward + 2·N backward (input gradients only; no weight gradients for frozen weights),
    with N the parameters of the body's linear layers (embedding lookups cost no FLOPs);
  LoRA matmuls: 6·N_lora (forward, input and weight gradients);
  attention scores and values: 4·T·d·L forward for a full T×T map, halved for the causal mask, ×3 with backward;
  output head: 2·V·d forward + 2·V·d backward, only for tokens that carry loss (that is all the head must do).
MFU = counted FLOPs / train seconds / the bf16 matmul peak measured in this same run with the same threads.
Peak memory is the process's peak resident set size (ru_maxrss), model loading included, taken when the framework's
own run returns (tunelab's includes its final evaluation and saving; TRL saves nothing) and before the shared scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_speed.md"
SETTINGS = {"r": 16, "alpha": 32, "lr": 1e-3, "warmup_ratio": 0.05, "max_length": 1024, "seed": 0}
WORKLOADS = {"short": {"examples": 480, "batch_size": 16}, "long": {"examples": 96, "batch_size": 8}}


def short_rows(n: int) -> list[dict]:
    """~60-token instruction examples: the dates task shipped in examples/."""
    lines = (ROOT / "examples" / "dates" / "train.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines[:n]]


def long_rows(n: int, seed: int = 0) -> list[dict]:
    """~500-token examples: a stock list of 30 lines and a question about one line."""
    rng = random.Random(seed)
    goods = ["green tea", "copper wire", "glass jars", "oak planks", "wool socks", "brass hinges", "rice flour"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
    rows = []
    for _ in range(n):
        stock = [(rng.randint(1, 9), rng.choice("ABCDEF"), rng.randint(2, 400), rng.choice(goods)) for _ in range(30)]
        lines = [f"Aisle {a}, shelf {s}: {q} boxes of {g} (restocked {rng.choice(days)})." for a, s, q, g in stock]
        aisle, shelf, qty, good = rng.choice(stock)
        question = f"How many boxes of {good} are on aisle {aisle}, shelf {shelf}? Answer with the number."
        rows.append({"messages": [
            {"role": "user", "content": "Stock list:\n" + "\n".join(lines) + "\n\n" + question},
            {"role": "assistant", "content": str(qty)},
        ]})  # fmt: skip
    return rows


def write_data(kind: str, folder: Path) -> tuple[Path, Path]:
    n = WORKLOADS[kind]["examples"]
    rows = short_rows(n + 64) if kind == "short" else long_rows(n + 24)
    train, val = folder / f"{kind}_train.jsonl", folder / f"{kind}_val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n:]))
    return train, val


def bf16_peak_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return best


# ----------------------------------------------------------------------------------------------- workers


def tokenized_validation(val: Path):
    from tunelab.data.load import load_examples
    from tunelab.data.tokenize import tokenize_all
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    data, _ = tokenize_all(load_examples([val]).examples, tokenizer, SETTINGS["max_length"])
    return data, tokenizer


def shared_val_loss(model, val: Path) -> float:
    import torch

    from tunelab.objectives.registry import OBJECTIVES
    from tunelab.train.module import TrainingModule
    from tunelab.train.validation import validation_metrics

    data, tokenizer = tokenized_validation(val)
    module = TrainingModule(model, OBJECTIVES["sft"])
    return validation_metrics(module, data, 8, tokenizer.pad_token_id, torch.device("cpu"), bf16=True)["val_loss"]


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (model loading included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_example(lengths: list[tuple[int, int]]) -> float:
    """Counted FLOPs for (sequence length, loss tokens) pairs, per the module docstring."""
    d, layers, vocab, mlp, kv = 576, 30, 49152, 1536, 192
    body = layers * (2 * d * d + 2 * d * kv + 3 * d * mlp)
    lora = layers * SETTINGS["r"] * ((d + d) * 2 + (d + kv) * 2 + (d + mlp) * 3)
    total = 0.0
    for t, answer in lengths:
        attention = 3 * (4 * t * d * layers / 2)
        total += t * (4 * body + 6 * lora + attention) + answer * 4 * vocab * d
    return total


def tunelab_config(train: Path, val: Path, batch_size: int, out_dir: Path):
    from tunelab.config import load_config

    return load_config(
        None,
        [
            f"data.train={train}", f"data.validation={val}", f"data.max_length={SETTINGS['max_length']}",
            f"method.r={SETTINGS['r']}", f"method.alpha={SETTINGS['alpha']}", "method.dropout=0",
            f"training.batch_size={batch_size}", f"training.learning_rate={SETTINGS['lr']}",
            f"training.warmup_ratio={SETTINGS['warmup_ratio']}", f"training.seed={SETTINGS['seed']}",
            "training.log_every=1", "eval.baseline=false", "eval.generate=false",
            f"output.dir={out_dir}", "output.name=tunelab",
        ],
    )  # fmt: skip


def tunelab_order(train: Path, val: Path, batch_size: int, out_dir: Path) -> list[int]:
    """The training file's rows in the order tunelab's first epoch takes them (its seeded, length-grouped shuffle),
    so that TRL, reading them in sequence, takes the same optimizer steps on the same batches."""
    from tunelab.data.schedule import epoch_batches
    from tunelab.models.load import load_tokenizer
    from tunelab.objectives.registry import OBJECTIVES
    from tunelab.recipes.run import prepare_args

    cfg = tunelab_config(train, val, batch_size, out_dir)
    items = OBJECTIVES["sft"].prepare(prepare_args(cfg, load_tokenizer("smollm2-135m"), out_dir / "order")).train
    batches = epoch_batches([len(t.input_ids) for t in items], batch_size, cfg.training.seed, 0)
    return [int(items[i].origin.rsplit(":", 1)[1]) - 1 for batch in batches for i in batch]


def worker_tunelab(train: Path, val: Path, batch_size: int, out_dir: Path) -> dict:
    from tunelab.recipes.run import run_training

    result = run_training(tunelab_config(train, val, batch_size, out_dir))
    peak = peak_rss_mb()  # training, tunelab's own final evaluation and saving; not the shared scoring below
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_seconds = [x for x in lines if "elapsed_s" in x][-1]["elapsed_s"]
    data, _ = tokenized_validation(train)
    return {
        "train_seconds": train_seconds,
        "tokens": sum(len(t.input_ids) for t in data),
        "lengths": [(len(t.input_ids), t.target_tokens) for t in data],
        "val_loss": shared_val_loss(result.model, val),
        "peak_rss_mb": peak,
    }


def worker_trl(train: Path, val: Path, batch_size: int, out_dir: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.load import load_tokenizer, resolve_source

    def prompt_completion(path: Path, order: list[int] | None = None) -> Dataset:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        rows = [rows[i] for i in order] if order is not None else rows
        return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    args = SFTConfig(
        output_dir=str(out_dir / "trl"), per_device_train_batch_size=batch_size, num_train_epochs=1,
        learning_rate=SETTINGS["lr"], lr_scheduler_type="cosine", warmup_steps=SETTINGS["warmup_ratio"],
        max_grad_norm=1.0, weight_decay=0.0, bf16=True, max_length=SETTINGS["max_length"], seed=SETTINGS["seed"],
        logging_steps=10, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
        train_sampling_strategy="sequential",  # the rows come in tunelab's batch order (see tunelab_order)
    )  # fmt: skip
    peft = LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(
        model=str(resolve_source("smollm2-135m").materialize()), args=args,
        train_dataset=prompt_completion(train, tunelab_order(train, val, batch_size, out_dir)),
        processing_class=load_tokenizer("smollm2-135m"), peft_config=peft, callbacks=[clock],
    )  # fmt: skip
    trainer.train()
    peak = peak_rss_mb()
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    val_loss = shared_val_loss(trainer.model, val)
    return {"train_seconds": clock.seconds, "tokens": tokens, "val_loss": val_loss, "peak_rss_mb": peak}


def run_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = worker_tunelab if args.framework == "tunelab" else worker_trl
    with tempfile.TemporaryDirectory() as tmp:
        result = work(Path(args.train), Path(args.val), args.batch_size, Path(tmp))
    Path(args.out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- driver


def run_side_by_side(kinds: list[str], threads: int) -> str:
    peak = bf16_peak_gflops(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind in kinds:
            train, val = write_data(kind, folder)
            measured = {}
            for framework in ("tunelab", "trl"):
                out = folder / f"{kind}-{framework}.json"
                cmd = [sys.executable, __file__, "worker", framework, str(train), str(val),
                       str(WORKLOADS[kind]["batch_size"]), str(out), "--threads", str(threads)]  # fmt: skip
                print(f"[{kind}] training with {framework} ...", flush=True)
                subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                measured[framework] = json.loads(out.read_text())
            flops = flops_per_example(measured["tunelab"]["lengths"])
            for m in measured.values():
                m["tokens_per_s"] = m["tokens"] / m["train_seconds"]
                m["mfu"] = flops / m["train_seconds"] / (peak * 1e9)
            ours, peer = measured["tunelab"], measured["trl"]
            rows.append((kind, ours, peer))
    return render(rows, peak, threads)


def render(rows: list, peak: float, threads: int) -> str:
    out = [
        f"# LoRA SFT: tunelab vs TRL SFTTrainer + peft (SmolLM2-135M, {threads} CPU threads)",
        "",
        f"bf16 matmul peak measured in this run: {peak:,.0f} GFLOP/s. Command: `python benchmarks/train_speed.py`.",
        "",
        "| data | framework | examples | tokens | train s | tokens/s | peak RSS MB | val loss | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, ours, peer in rows:
        n = WORKLOADS[kind]["examples"]
        for name, m in (("tunelab", ours), ("TRL + peft", peer)):
            out.append(
                f"| {kind} | {name} | {n} | {m['tokens']:,} | {m['train_seconds']:.1f} | {m['tokens_per_s']:,.0f} | "
                f"{m['peak_rss_mb']:,.0f} | {m['val_loss']:.4f} | {m['mfu']:.1%} |"
            )
        out.append(
            f"| {kind} | **ratio** | | | | **{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x** | "
            f"**{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x** | "
            f"{(ours['val_loss'] - peer['val_loss']) / peer['val_loss']:+.1%} | |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    for name in ("framework", "train", "val"):
        w.add_argument(name)
    w.add_argument("batch_size", type=int)
    w.add_argument("out")
    w.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=list(WORKLOADS))
    parser.add_argument("--examples", type=int, help="train examples per workload (a quick smoke run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.mode == "worker":
        run_worker(args)
        return
    if args.examples:
        for workload in WORKLOADS.values():
            workload["examples"] = args.examples
    table = run_side_by_side([args.only] if args.only else list(WORKLOADS), args.threads)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
