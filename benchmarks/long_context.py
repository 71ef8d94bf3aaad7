"""Long context on the embedded SmolLM2-135M-Instruct (trained at 8,192 positions): training speed and memory vs row
length, and RoPE scaling to reach 2x its context.

1. **Speed and memory vs length** (`--only memory`): one `tunelab train` run per row length and setting, each in its
   own process (so its peak resident memory is its own), continued pretraining with LoRA r 16 on one row of that
   many tokens (less 16) (Python standard-library source), bf16, batch 1. Settings: tunelab's defaults for long rows
   (gradient checkpointing on, the loss in chunks of `training.loss_chunk_tokens` 2,048) and the same without
   chunking (`loss_chunk_tokens: 0`) and without checkpointing, up to the lengths they are asked for. Rows past
   8,192 tokens use `model.rope_scaling: {type: yarn, factor: 4}`. Tokens/s is the run's own `tokens_per_s` of its
   last step (the first is a warm-up where there are two); peak memory is the process's peak RSS (model load,
   its final save included).
2. **RoPE scaling at 2x the context** (`--only rope`): held-out documents of 16,384 tokens (standard-library modules
   not used for training); per-token loss on the first 8,192 positions (inside the trained context) and on the last
   8,192 (past it) for the model as it is, with linear, dynamic-NTK and YaRN scaling (factor 2) and no training, and
   after a short LoRA fine-tune with YaRN 2 on other 16,384-token documents (`tunelab train`, gradient checkpointing,
   chunked loss). Perplexity = exp(mean loss); intervals are 95% bootstrap intervals over documents x 512-token
   blocks of the positions, and the fine-tune's change is a paired bootstrap over the same blocks.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/long_context.py [--only memory rope] [--lengths 1024 ... 32768]

Writes benchmarks/results/long_context.md and long_context.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONTEXT = 8192
"""SmolLM2-135M's trained context (max_position_embeddings)."""
SETTINGS = {
    "tunelab": ["training.gradient_checkpointing=true"],
    "no chunked loss": ["training.gradient_checkpointing=true", "training.loss_chunk_tokens=0"],
    "no checkpointing": ["training.gradient_checkpointing=false"],
}
SLACK = 16
"""Training documents are this many tokens under the row length: decoding and encoding again may add a token or two,
and a row must stay within `data.max_length` (and the scaled context) to be one window."""
BLOCK = 512
"""Positions per bootstrap block (neighbouring tokens' losses are correlated; blocks are close to independent)."""


def stdlib_files() -> list[Path]:
    """The standard library's Python modules in a fixed order (tests and vendored packages left out)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "site-packages", "idlelib", "lib2to3", "ensurepip", "__pycache__")
    files = [p for p in sorted(lib.rglob("*.py")) if not any(part in skip for part in p.relative_to(lib).parts)]
    return [p for p in files if p.stat().st_size > 2000]


def documents(tokenizer, length: int, count: int, skip: int = 0) -> list[list[int]]:
    """`count` documents of exactly `length` tokens: consecutive standard-library modules joined, after the first
    `skip` documents' worth (so training and held-out documents share no file)."""
    out: list[list[int]] = []
    ids: list[int] = []
    for path in stdlib_files():
        ids += tokenizer(f"# {path.name}\n{path.read_text(encoding='utf-8', errors='replace')}\n")["input_ids"]
        while len(ids) >= length:
            if skip:
                skip -= 1
            else:
                out.append(ids[:length])
                if len(out) == count:
                    return out
            ids = []
    raise SystemExit(f"the standard library holds fewer than {count} documents of {length} tokens")


def write_text_rows(path: Path, tokenizer, docs: list[list[int]]) -> Path:
    """Documents as `text` rows; decoding and encoding again gives back as many tokens, give or take a few (checked)."""
    rows = []
    for doc in docs:
        text = tokenizer.decode(doc)
        again = len(tokenizer(text)["input_ids"])
        assert abs(again - len(doc)) < SLACK, (again, len(doc))
        rows.append(json.dumps({"text": text}))
    path.write_text("\n".join(rows) + "\n")
    return path


def train_overrides(length: int, steps: int) -> list[str]:
    """The settings every run here shares: continued pretraining of one row per step with LoRA r 16 in bf16."""
    return [
        "data.val_fraction=0", f"data.max_length={length}", "objective=pretrain",
        "method=lora", "method.r=16", "method.alpha=32", "training.batch_size=1", f"training.max_steps={steps}",
        "training.learning_rate=5e-4", "training.warmup_ratio=0", "training.log_every=1", "training.precision=bf16",
        "eval.generate=false",
    ]  # fmt: skip


def tunelab_train(data: Path, run: Path, overrides: list[str], log: Path) -> Path:
    """`tunelab train --data DATA` into the run folder `run` with these settings (its output appended to `log`)."""
    args = [str(Path(sys.executable).with_name("tunelab")), "train", "--data", str(data)]
    for item in [f"output.dir={run.parent}", f"output.name={run.name}", *overrides]:
        args += ["--set", item]
    with log.open("a") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tunelab train failed (exit {done.returncode}); see {log}")
    return run


def step_metrics(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in lines if "tokens_per_s" in x]
    return {"tokens_per_s": steps[-1]["tokens_per_s"], "peak_mem_mb": max(x["peak_mem_mb"] for x in steps),
            "steps": len(steps)}  # fmt: skip


def measure_memory(args: argparse.Namespace, tokenizer, work: Path, log: Path, done) -> dict:
    """{setting: {length: metrics}}; a setting stops at the first length it fails at (noted)."""
    results: dict = {name: {} for name in args.settings}
    for name in args.settings:
        for length in args.lengths:
            if name != "tunelab" and length > args.others_up_to:
                continue
            data = write_text_rows(work / f"doc_{length}.jsonl", tokenizer, documents(tokenizer, length - SLACK, 1))
            steps = 2 if length <= 8192 else 1
            sets = [*train_overrides(length, steps), *SETTINGS[name]]
            if length > CONTEXT:
                sets.append("model.rope_scaling={type: yarn, factor: 4}")
            started = time.perf_counter()
            try:
                run = tunelab_train(data, work / f"{name.replace(' ', '_')}_{length}", sets, log)
            except RuntimeError as exc:
                results[name][length] = {"failed": str(exc)}
                done(results)
                print(name, length, "failed:", exc, flush=True)
                break
            results[name][length] = {**step_metrics(run), "wall_s": time.perf_counter() - started}
            print(name, length, results[name][length], flush=True)
            done(results)
    return results


def token_losses(model, ids: list[int]) -> list[float]:
    """Each next-token loss of one document (the head and the loss in 2,048-position chunks)."""
    import torch
    import torch.nn.functional as F

    from tunelab.models.parts import decoder_and_head

    decoder, head = decoder_and_head(model)  # type: ignore[misc]
    x = torch.tensor([ids])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[0, :-1]
        losses = [F.cross_entropy(head(h).float(), t, reduction="none")
                  for h, t in zip(hidden.split(2048), x[0, 1:].split(2048), strict=True)]  # fmt: skip
    return torch.cat(losses).tolist()


def block_means(losses: list[float], lo: int, hi: int) -> list[float]:
    part = losses[lo:hi]
    return [sum(part[i : i + BLOCK]) / len(part[i : i + BLOCK]) for i in range(0, len(part), BLOCK)]


def bootstrap(values: list[float], seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def ppl_cells(blocks: list[float]) -> dict:
    mean = sum(blocks) / len(blocks)
    lo, hi = bootstrap(blocks)
    return {"loss": mean, "ppl": math.exp(mean), "ppl_low": math.exp(lo), "ppl_high": math.exp(hi), "blocks": blocks}


def score(model, docs: list[list[int]]) -> dict:
    """Perplexity inside (first CONTEXT positions) and past the trained context (the rest), with intervals."""
    inside: list[float] = []
    past: list[float] = []
    for doc in docs:
        losses = token_losses(model, doc)
        inside += block_means(losses, 0, CONTEXT - 1)
        past += block_means(losses, CONTEXT - 1, len(losses))
    return {"inside": ppl_cells(inside), "past": ppl_cells(past)}


def measure_rope(args: argparse.Namespace, tokenizer, work: Path, log: Path, done) -> dict:
    from tunelab.methods.trained import load_trained
    from tunelab.models.load import load_model
    from tunelab.models.rope import RopeScaling, scale_rope_

    length = 2 * CONTEXT
    held_out = documents(tokenizer, length, args.rope_docs)
    results: dict = {}
    for kind in ("none", "linear", "dynamic", "yarn"):
        model = load_model("smollm2-135m")
        if kind != "none":
            scale_rope_(model, RopeScaling(type=kind, factor=2))  # type: ignore[arg-type]
        started = time.perf_counter()
        results[kind] = {**score(model, held_out), "eval_s": time.perf_counter() - started}
        print(kind, {k: round(v["ppl"], 3) for k, v in results[kind].items() if isinstance(v, dict)}, flush=True)
        done(results)
        del model
    data = write_text_rows(work / "rope_train.jsonl", tokenizer,
                           documents(tokenizer, length - SLACK, args.tune_docs, skip=args.rope_docs))  # fmt: skip
    sets = [*train_overrides(length, args.tune_steps), "training.gradient_checkpointing=true",
            "model.rope_scaling={type: yarn, factor: 2}", f"training.learning_rate={args.tune_lr}"]  # fmt: skip
    started = time.perf_counter()
    run = tunelab_train(data, work / "yarn_tuned", sets, log)
    train_s = time.perf_counter() - started
    model, _ = load_trained(str(run))
    results["yarn + fine-tune"] = {**score(model, held_out), "train_s": train_s, **step_metrics(run)}
    done(results)
    return results


def paired(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """Mean of second - first over blocks, with its 95% paired-bootstrap interval (in loss, nats)."""
    diffs = [b - a for a, b in zip(first, second, strict=True)]
    lo, hi = bootstrap(diffs)
    return sum(diffs) / len(diffs), lo, hi


def memory_section(results: dict) -> list[str]:
    lengths = sorted({int(n) for rows in results.values() for n in rows})
    lines = ["## Speed and peak memory vs row length", "",
             "| setting | " + " | ".join(f"{n:,} tokens" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]  # fmt: skip
    for name, rows in results.items():
        cells = []
        for n in lengths:
            row = rows.get(str(n)) or rows.get(n)
            if row is None:
                cells.append("not run")
            elif "failed" in row:
                cells.append("failed")
            else:
                cells.append(f"{row['tokens_per_s']:,.0f} tok/s, {row['peak_mem_mb'] / 1024:.2f} GiB")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def rope_section(results: dict) -> list[str]:
    lines = ["## RoPE scaling: perplexity at 2x the trained context", "",
             "| model | positions 1-8,192 (inside) | positions 8,193-16,384 (past) |", "|---|---|---|"]  # fmt: skip
    for kind, row in results.items():
        cells = [f"{row[p]['ppl']:.3f} [{row[p]['ppl_low']:.3f}, {row[p]['ppl_high']:.3f}]" for p in ("inside", "past")]
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    tuned = results.get("yarn + fine-tune")
    if tuned and "yarn" in results:
        lines.append("")
        for part in ("inside", "past"):
            mean, lo, hi = paired(results["yarn"][part]["blocks"], tuned[part]["blocks"])
            verdict = "significant" if hi < 0 or lo > 0 else "not significant"
            lines.append(f"- Fine-tune vs YaRN alone, {part}: loss {mean:+.4f} nats [{lo:+.4f}, {hi:+.4f}] "
                         f"({verdict} at 5%).")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=("memory", "rope"), default=["memory", "rope"])
    parser.add_argument("--lengths", nargs="*", type=int, default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--others-up-to", type=int, default=8192, help="longest row the other settings train on")
    parser.add_argument("--rope-docs", type=int, default=3, help="held-out 16k-token documents")
    parser.add_argument("--tune-docs", type=int, default=8, help="16k-token documents the fine-tune trains on")
    parser.add_argument("--tune-steps", type=int, default=8, help="fine-tune optimizer steps (1 document each)")
    parser.add_argument("--tune-lr", type=float, default=5e-4)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    json_path = RESULTS / "long_context.json"
    saved = json.loads(json_path.read_text()) if json_path.is_file() else {}
    started = time.perf_counter()

    def write(part: str):
        def done(results: dict) -> None:
            saved[part] = json.loads(json.dumps(results))  # int keys become strings, as read back
            saved.setdefault("args", {})[part] = vars(args)
            json_path.write_text(json.dumps(saved, indent=1))
            report(saved, time.perf_counter() - started)

        return done

    log = RESULTS / "long_context.log"
    with tempfile.TemporaryDirectory(prefix="tunelab-long-") as tmp:
        work = Path(tmp)
        log.write_text("")
        if "memory" in args.only:
            measure_memory(args, tokenizer, work, log, write("memory"))
        if "rope" in args.only:
            measure_rope(args, tokenizer, work, log, write("rope"))
    if not any("failed" in row for rows in saved.get("memory", {}).values() for row in rows.values()):
        log.unlink(missing_ok=True)


def report(saved: dict, wall: float) -> None:
    lines = ["# Long context", "", __doc__.split("\n\n    ")[0].strip(), ""]
    if "memory" in saved:
        lines += [*memory_section(saved["memory"]), ""]
    if "rope" in saved:
        lines += [*rope_section(saved["rope"]), ""]
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    lines.append(f"Device: CPU ({platform.machine()}, {os.cpu_count()} cores, {threads} threads); wall time of this "
                 f"run {wall:.0f} s.")  # fmt: skip
    (RESULTS / "long_context.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
