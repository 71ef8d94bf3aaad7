"""LoRA SFT speed and memory: tunelab vs TRL's SFTTrainer + peft, side by side, on identical data and settings.

    python benchmarks/train_speed.py                 # short (~60-token) and long (~500-token) chat examples
    python benchmarks/train_speed.py --only short    # one of them
    python benchmarks/train_speed.py --scaling       # 135M, 360M and 1.7B shapes, a few timed steps each

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
MFU = counted FLOPs / train seconds / the bf16 matmul peak measured in this same run with the same threads: the
best of several large bf16 products (squares of 2048-4096 and a training piece's [4096 x 576] x [576 x 1536]),
each warmed up and timed five times (`bf16_peak_gflops`).
`--scaling` runs the same comparison on SmolLM2's 360M and 1.7B shapes with random weights (built from the shipped
config, nothing downloaded) beside the shipped 135M, timing the optimizer steps after a warm-up.
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
from collections.abc import Sequence
from dataclasses import dataclass
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


PEAK_SHAPES = [(2048, 2048, 2048), (3072, 3072, 3072), (4096, 4096, 4096), (4096, 576, 1536), (4096, 1536, 576)]
"""(m, k, n) of the bf16 matrix products the peak is the best of: squares and a training piece's MLP products."""


def bf16_peak_gflops(threads: int, repeats: int = 5) -> tuple[float, str]:
    """The best bf16 matmul rate over `PEAK_SHAPES` with `threads` threads (the training's), each shape warmed up
    and then timed `repeats` times over ~0.2 s; with how it was measured. One shape timed once is not a peak:
    2048^3 alone read 762 GFLOP/s in one run and 1,907 in another on this machine."""
    import torch

    torch.set_num_threads(threads)
    best: dict[tuple[int, int, int], float] = {}
    for m, k, n in PEAK_SHAPES:
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        start = time.perf_counter()
        for _ in range(2):  # warm-up, and a first reading of how many products fill ~0.2 s
            a @ b
        calls = max(1, int(0.4 / (time.perf_counter() - start)))
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                a @ b
            rate = calls * 2 * m * k * n / (time.perf_counter() - start) / 1e9
            best[(m, k, n)] = max(best.get((m, k, n), 0.0), rate)
    peak = max(best.values())
    shapes = ", ".join(f"{m}x{k}x{n}: {r:,.0f}" for (m, k, n), r in best.items())
    how = (
        f"best of {repeats} timed repeats after a warm-up, per shape (m x k x n: GFLOP/s), {threads} threads: {shapes}"
    )
    return peak, how


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


@dataclass(frozen=True)
class Shape:
    """The sizes FLOPs are counted from (a Llama-family body with tied embeddings)."""

    d: int = 576
    layers: int = 30
    vocab: int = 49152
    mlp: int = 1536
    heads: int = 9
    kv_heads: int = 3

    @property
    def kv(self) -> int:
        return self.d // self.heads * self.kv_heads


SIZES = {
    "135M": Shape(),
    "360M": Shape(d=960, layers=32, mlp=2560, heads=15, kv_heads=5),
    "1.7B": Shape(d=2048, layers=24, mlp=8192, heads=32, kv_heads=32),
}
"""SmolLM2's three sizes: 135M as shipped (trained weights), 360M and 1.7B with their shapes and random weights."""


def flops_per_example(lengths: list[tuple[int, int]], shape: Shape = SIZES["135M"]) -> float:
    """Counted FLOPs for (sequence length, loss tokens) pairs, per the module docstring."""
    d, layers, vocab, mlp, kv = shape.d, shape.layers, shape.vocab, shape.mlp, shape.kv
    body = layers * (2 * d * d + 2 * d * kv + 3 * d * mlp)
    lora = layers * SETTINGS["r"] * ((d + d) * 2 + (d + kv) * 2 + (d + mlp) * 3)
    total = 0.0
    for t, answer in lengths:
        attention = 3 * (4 * t * d * layers / 2)
        total += t * (4 * body + 6 * lora + attention) + answer * 4 * vocab * d
    return total


def model_folder(size: str, folder: Path) -> Path:
    """The shipped SmolLM2-135M's folder, or a folder with a random-weight model of `size`'s shape (its tokenizer,
    config and dtype otherwise the shipped model's). Nothing is downloaded."""
    from tunelab.models.load import resolve_source

    shipped = resolve_source("smollm2-135m").materialize()
    if size == "135M":
        return Path(shipped)
    out = folder / f"smollm2-{size}-random"
    if (out / "config.json").is_file():
        return out
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    shape = SIZES[size]
    config = AutoConfig.from_pretrained(shipped)
    config.update({"hidden_size": shape.d, "intermediate_size": shape.mlp, "num_hidden_layers": shape.layers,
                   "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
                   "head_dim": shape.d // shape.heads})  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)  # pyright: ignore[reportArgumentType] - a LlamaConfig
    for f in Path(shipped).iterdir():  # the tokenizer and chat template
        if f.is_file() and not f.name.startswith(("config", "model", "generation")) and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    return out


@dataclass(frozen=True)
class Job:
    """One framework's run: the data, the batch size, the model folder, and which steps are timed."""

    train: Path
    val: Path
    batch_size: int
    model: Path
    warmup: int = 0
    """Optimizer steps run before the clock starts (0: the whole run is timed)."""
    score: bool = True
    """Score the final model on the validation rows (the shared val loss)."""


def tunelab_config(job: Job, out_dir: Path):
    from tunelab.config import load_config

    return load_config(
        None,
        [
            f"model.source={job.model}",
            f"data.train={job.train}", f"data.validation={job.val}", f"data.max_length={SETTINGS['max_length']}",
            f"method.r={SETTINGS['r']}", f"method.alpha={SETTINGS['alpha']}", "method.dropout=0",
            f"training.batch_size={job.batch_size}", f"training.learning_rate={SETTINGS['lr']}",
            f"training.warmup_ratio={SETTINGS['warmup_ratio']}", f"training.seed={SETTINGS['seed']}",
            "training.log_every=1", "eval.baseline=false", "eval.generate=false",
            f"output.dir={out_dir}", "output.name=tunelab",
        ],
    )  # fmt: skip


def tunelab_order(job: Job, out_dir: Path) -> list[int]:
    """The training file's rows in the order tunelab's first epoch takes them (its seeded, length-grouped shuffle),
    so that TRL, reading them in sequence, takes the same optimizer steps on the same batches."""
    from tunelab.data.schedule import epoch_batches
    from tunelab.models.load import load_tokenizer
    from tunelab.objectives.registry import OBJECTIVES
    from tunelab.recipes.run import prepare_args

    cfg = tunelab_config(job, out_dir)
    items = OBJECTIVES["sft"].prepare(prepare_args(cfg, load_tokenizer("smollm2-135m"), out_dir / "order")).train
    batches = epoch_batches([len(t.input_ids) for t in items], job.batch_size, cfg.training.seed, 0)
    return [int(items[i].origin.rsplit(":", 1)[1]) - 1 for batch in batches for i in batch]


def timed_window(step_ends: list[float], step_tokens: Sequence[float], warmup: int) -> tuple[float, float]:
    """(seconds, tokens) of the steps after the first `warmup`: from the end of step `warmup` to the last."""
    if warmup == 0:
        return step_ends[-1], sum(step_tokens)
    return step_ends[-1] - step_ends[warmup - 1], sum(step_tokens[warmup:])


def worker_tunelab(job: Job, out_dir: Path) -> dict:
    from tunelab.recipes.run import run_training

    result = run_training(tunelab_config(job, out_dir))
    peak = peak_rss_mb()  # training, tunelab's own final evaluation and saving; not the shared scoring below
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "elapsed_s" in x]
    ends = [x["elapsed_s"] for x in steps]
    # Each line is one step (log_every=1): its tokens are its rate times its time.
    tokens = [x["tokens_per_s"] * (e - b) for x, e, b in zip(steps, ends, [0.0, *ends[:-1]], strict=True)]
    data, _ = tokenized_validation(job.train)
    seconds, timed_tokens = timed_window(ends, tokens, job.warmup)
    return {
        "train_seconds": seconds,
        "tokens": timed_tokens if job.warmup else sum(len(t.input_ids) for t in data),
        "lengths": [(len(t.input_ids), t.target_tokens) for t in data],
        "steps": len(steps) - job.warmup,
        "val_loss": shared_val_loss(result.model, job.val) if job.score else None,
        "peak_rss_mb": peak,
    }


def worker_trl(job: Job, out_dir: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.load import load_tokenizer

    def prompt_completion(path: Path, order: list[int] | None = None) -> Dataset:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        rows = [rows[i] for i in order] if order is not None else rows
        return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter() - self.start)

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    args = SFTConfig(
        output_dir=str(out_dir / "trl"), per_device_train_batch_size=job.batch_size, num_train_epochs=1,
        learning_rate=SETTINGS["lr"], lr_scheduler_type="cosine", warmup_steps=SETTINGS["warmup_ratio"],
        max_grad_norm=1.0, weight_decay=0.0, bf16=True, max_length=SETTINGS["max_length"], seed=SETTINGS["seed"],
        logging_steps=10, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
        train_sampling_strategy="sequential",  # the rows come in tunelab's batch order (see tunelab_order)
    )  # fmt: skip
    peft = LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(
        model=str(job.model), args=args,
        train_dataset=prompt_completion(job.train, tunelab_order(job, out_dir)),
        processing_class=load_tokenizer("smollm2-135m"), peft_config=peft, callbacks=[clock],
    )  # fmt: skip
    trainer.train()
    peak = peak_rss_mb()
    assert trainer.train_dataset is not None
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    per_step = [sum(lengths[i : i + job.batch_size]) for i in range(0, len(lengths), job.batch_size)]
    if job.warmup:
        seconds, tokens = timed_window(clock.ends, per_step, job.warmup)
    else:
        seconds, tokens = clock.seconds, sum(lengths)
    val_loss = shared_val_loss(trainer.model, job.val) if job.score else None
    return {"train_seconds": seconds, "tokens": tokens, "val_loss": val_loss, "peak_rss_mb": peak,
            "steps": len(per_step) - job.warmup}  # fmt: skip


def run_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = worker_tunelab if args.framework == "tunelab" else worker_trl
    job = Job(Path(args.train), Path(args.val), args.batch_size, Path(args.model), args.warmup, not args.no_score)
    with tempfile.TemporaryDirectory() as tmp:
        result = work(job, Path(tmp))
    Path(args.out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- driver


def run_job(job: Job, framework: str, out: Path, threads: int) -> dict:
    """One framework's run in its own process (so that its peak memory is its own); its measurements."""
    cmd = [sys.executable, __file__, "worker", framework, str(job.train), str(job.val), str(job.batch_size),
           str(out), "--threads", str(threads), "--model", str(job.model), "--warmup", str(job.warmup)]  # fmt: skip
    if not job.score:
        cmd.append("--no-score")
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(out.read_text())


def run_side_by_side(kinds: list[str], threads: int) -> str:
    peak, how = bf16_peak_gflops(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind in kinds:
            train, val = write_data(kind, folder)
            job = Job(train, val, WORKLOADS[kind]["batch_size"], model_folder("135M", folder))
            measured = {}
            for framework in ("tunelab", "trl"):
                print(f"[{kind}] training with {framework} ...", flush=True)
                measured[framework] = run_job(job, framework, folder / f"{kind}-{framework}.json", threads)
            flops = flops_per_example(measured["tunelab"]["lengths"])
            for m in measured.values():
                m["tokens_per_s"] = m["tokens"] / m["train_seconds"]
                m["mfu"] = flops / m["train_seconds"] / (peak * 1e9)
            ours, peer = measured["tunelab"], measured["trl"]
            rows.append((kind, ours, peer))
    return render(rows, peak, how, threads)


def render(rows: list, peak: float, how: str, threads: int) -> str:
    out = [
        f"# LoRA SFT: tunelab vs TRL SFTTrainer + peft (SmolLM2-135M, {threads} CPU threads)",
        "",
        f"bf16 matmul peak measured in this run: {peak:,.0f} GFLOP/s ({how}). MFU is against it. "
        "Command: `python benchmarks/train_speed.py`.",
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


# ----------------------------------------------------------------------------------------------- scaling

SCALING_BATCH = {"135M": {"short": 16, "long": 4}, "360M": {"short": 8, "long": 2}, "1.7B": {"short": 4, "long": 1}}
"""Batch sizes per model size and row length (smaller for larger models, so that a run takes minutes and TRL's
1.7B run stays well inside 24 GiB)."""
SCALING_CELLS = ROOT / "benchmarks" / "results" / "train_speed_scaling.json"
"""Each measured (size, rows, framework) cell, kept so that a run of some sizes adds to the others."""


def scaling_rows(kind: str, n: int) -> list[dict]:
    return short_rows(n) if kind == "short" else long_rows(n)


def run_scaling(sizes: list[str], kinds: list[str], threads: int, steps: int, warmup: int) -> str:
    """tunelab and TRL at each size and row length: `warmup` steps, then `steps` timed optimizer steps."""
    peak, how = bf16_peak_gflops(threads)
    cells = json.loads(SCALING_CELLS.read_text()) if SCALING_CELLS.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in sizes:
            model = model_folder(size, folder)
            for kind in kinds:
                batch = SCALING_BATCH[size][kind]
                rows = scaling_rows(kind, (steps + warmup) * batch + 8)
                train, val = folder / f"{size}-{kind}-train.jsonl", folder / f"{size}-{kind}-val.jsonl"
                train.write_text("".join(json.dumps(r) + "\n" for r in rows[:-8]))
                val.write_text("".join(json.dumps(r) + "\n" for r in rows[-8:]))
                job = Job(train, val, batch, model, warmup, score=False)
                for framework in ("tunelab", "trl"):
                    print(f"[{size} {kind}] training with {framework} ...", flush=True)
                    m = run_job(job, framework, folder / f"{size}-{kind}-{framework}.json", threads)
                    m.pop("lengths", None)
                    # FLOPs of the timed rows: their mean counted FLOPs per token times the timed tokens.
                    lengths = [(len(t.input_ids), t.target_tokens) for t in tokenized_validation(train)[0]]
                    per_token = flops_per_example(lengths, SIZES[size]) / sum(t for t, _ in lengths)
                    m.update(tokens_per_s=m["tokens"] / m["train_seconds"], batch_size=batch, peak_gflops=peak,
                             mfu=per_token * m["tokens"] / m["train_seconds"] / (peak * 1e9))  # fmt: skip
                    cells[f"{size}|{kind}|{framework}"] = m
                    SCALING_CELLS.write_text(json.dumps(cells, indent=1))
            if model != model_folder("135M", folder):
                import shutil

                shutil.rmtree(model)
    return render_scaling(cells, how, steps, warmup)


def render_scaling(cells: dict, how: str, steps: int, warmup: int) -> str:
    out = [
        "## Scaling",
        "",
        "The same comparison at SmolLM2's three sizes (135M as shipped; 360M and 1.7B with their shapes and random "
        "weights), short and long rows, the same batches in the same order for both: warm-up optimizer steps, then "
        f"the timed ones the table counts (the last run: {warmup} and {steps}; `python benchmarks/train_speed.py "
        "--scaling`). Peak RSS of each framework's process. MFU against the bf16 peak of the run that measured the "
        f"cell (the last: {how}).",
        "",
        "| size | rows | batch | framework | timed steps | tokens | tokens/s | peak RSS MB | MFU | tunelab / TRL |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for size in SIZES:
        for kind in WORKLOADS:
            ours, peer = cells.get(f"{size}|{kind}|tunelab"), cells.get(f"{size}|{kind}|trl")
            for name, m in (("tunelab", ours), ("TRL + peft", peer)):
                if m is None:
                    continue
                ratio = ""
                if ours is not None and peer is not None and name == "tunelab":
                    ratio = (f"**{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x** tokens/s, "
                             f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x RSS")  # fmt: skip
                out.append(
                    f"| {size} | {kind} | {m['batch_size']} | {name} | {m['steps']} | {m['tokens']:,.0f} | "
                    f"{m['tokens_per_s']:,.1f} | {m['peak_rss_mb']:,.0f} | {m['mfu']:.1%} | {ratio} |"
                )
    return "\n".join(out) + "\n"


def write_section(text: str, heading: str | None) -> None:
    """Put `text` into train_speed.md: as the part before the first `## ` heading (`heading` None), or in place
    of the section that starts with `heading`, keeping every other section as it is."""
    old = RESULTS.read_text() if RESULTS.is_file() else ""
    parts = old.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    if heading is None:
        head = text.rstrip("\n")
    else:
        found = [i for i, sec in enumerate(sections) if sec.startswith(heading)]
        if found:
            sections[found[0]] = text.rstrip("\n")
        else:
            sections.append(text.rstrip("\n"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n\n".join([head, *sections]).rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    for name in ("framework", "train", "val"):
        w.add_argument(name)
    w.add_argument("batch_size", type=int)
    w.add_argument("out")
    w.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    w.add_argument("--model", required=True)
    w.add_argument("--warmup", type=int, default=0)
    w.add_argument("--no-score", action="store_true")
    parser.add_argument("--only", choices=list(WORKLOADS))
    parser.add_argument("--examples", type=int, help="train examples per workload (a quick smoke run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scaling", action="store_true", help="the comparison at three model sizes (see SIZES)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="with --scaling")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per --scaling cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    args = parser.parse_args()
    if args.mode == "worker":
        run_worker(args)
        return
    kinds = [args.only] if args.only else list(WORKLOADS)
    if args.scaling:
        table = run_scaling(args.sizes, kinds, args.threads, args.steps, args.warmup)
        print(table)
        write_section(table, "## Scaling")
        return
    if args.examples:
        for workload in WORKLOADS.values():
            workload["examples"] = args.examples
    table = run_side_by_side(kinds, args.threads)
    print(table)
    write_section(table, None)


if __name__ == "__main__":
    main()
