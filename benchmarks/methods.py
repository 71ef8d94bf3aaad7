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

With `--classify` it measures the second section of the same file instead: the same model on a classification
task (examples/classify, 4 topics) adapted three ways under one budget: LoRA SFT that generates the label as text,
the `classify` objective's head on a LoRA body, and that head alone on a frozen body. Accuracy and macro-F1 are
the runs' own final metrics, and each held-out row's result is read from the run's predictions.jsonl for the
accuracy interval and the McNemar test against the head on LoRA. Its rows live in
benchmarks/results/methods_classify.json; the generation table above it is kept as written.

    .venv/bin/python benchmarks/methods.py                                   # every method, 60 steps
    .venv/bin/python benchmarks/methods.py --steps 4 --eval-examples 8 --only lora ia3   # smoke run
    .venv/bin/python benchmarks/methods.py --classify --steps 40             # the classification section
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
from collections import Counter
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

CLASSIFY = ROOT / "examples" / "classify"
CLASS_ROWS = OUT.with_name("methods_classify.json")
SECTION = "## A classification head"
"""The heading of the classification section; what comes before it in methods.md is the generation table."""
SFT_ARM = "label-sft"
LORA_BODY = ["method=lora", "method.r=8", "method.alpha=16"]  # the adapter of examples/classify/config.yaml

# name -> (what it is, config overrides). The two head arms train the head at the example's head_lr (1e-2); LoRA
# matrices train at its learning_rate (1e-3), the rate label-sft uses too.
ARMS: dict[str, tuple[str, list[str]]] = {
    SFT_ARM: ("LoRA r 8, SFT: the label generated as text", [*LORA_BODY, "training.learning_rate=1e-3"]),
    "head+lora": ("objective classify: linear head on a LoRA r 8 body", LORA_BODY),
    "head-only": ("objective classify: the head alone, body frozen (method freeze, no layers)",
                  ["method=freeze", "method.top_k_layers=0"]),
}  # fmt: skip
CLASS_REFERENCE = "head+lora"
"""The arm every other's per-row results are tested against (McNemar)."""


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
    return {
        "final": result.final, "trainable": trainable, "total": total, "wall_s": wall,
        "tokens_per_s": _mean_speed(result.run_dir), "peak_mb": _peak_mb(), "exact": _exact(result.run_dir),
    }  # fmt: skip


def _mean_speed(run_dir: Path) -> float | None:
    """Mean training tokens/s over the run's logged steps (metrics.jsonl)."""
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    speeds = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    return sum(speeds) / len(speeds) if speeds else None


def _label_chats(work: Path) -> tuple[Path, Path]:
    """The classify task's train and test rows as chat rows whose answer is the label (for label-sft); line k of
    each file is line k of the classify file, so the runs' origins pair the same held-out rows."""
    splits = {s: [json.loads(x) for x in (CLASSIFY / f"{s}.jsonl").read_text().splitlines() if x.strip()]
              for s in ("train", "test")}  # fmt: skip
    names = sorted({r["label"] for r in splits["train"]})
    question = f"Which topic is this sentence about ({', '.join(names)})? Answer with the topic only.\n\n"
    paths = []
    for split, rows in splits.items():
        chats = [{"messages": [{"role": "user", "content": question + r["text"]},
                               {"role": "assistant", "content": r["label"]}]} for r in rows]  # fmt: skip
        paths.append(work / f"topics_{split}.jsonl")
        paths[-1].write_text("".join(json.dumps(c) + "\n" for c in chats))
    return paths[0], paths[1]


def _arm_config(name: str, steps: int, work: Path):
    from tunelab.config import load_config

    common = [f"training.max_steps={steps}", "training.batch_size=16", "training.log_every=5", "eval.baseline=false",
              f"output.dir={work}", f"output.name={name}", "output.overwrite=true"]  # fmt: skip
    if name == SFT_ARM:
        train, test = _label_chats(work)
        return load_config(None, [
            "model.source=smollm2-135m", f"data.train={train}", f"data.validation={test}", "data.max_length=128",
            *ARMS[name][1], "eval.generate=true", "eval.max_examples=1000", "eval.max_new_tokens=8", *common,
        ])  # fmt: skip
    # pooling last: a decoder's last real token is the only one that has seen the whole sentence (the example's
    # `mean` is for its MiniLM encoder).
    return load_config(CLASSIFY / "config.yaml", ["model.source=smollm2-135m", "objective.pooling=last",
                                                   *ARMS[name][1], *common])  # fmt: skip


def _line(origin: str) -> str:
    """The held-out row an origin names ('…/test.jsonl:12' -> '12'), the same for the chat copy of the file."""
    return origin.rsplit(":", 1)[1]


def run_arm(name: str, steps: int, work: Path) -> dict:
    """Train and evaluate one classification arm in this process; returns its row."""
    from rich.console import Console

    from tunelab.methods.base import trainable_parameters
    from tunelab.recipes.run import run_training

    cfg = _arm_config(name, steps, work)
    start = time.perf_counter()
    result = run_training(cfg, console=Console(quiet=True))
    wall = time.perf_counter() - start
    trainable, total = trainable_parameters(result.model)
    f = result.final
    # Generation scores each answer as exact_match, a classifier each row as accuracy; both are 0/1 per row.
    score, acc, f1 = (
        ("exact_match", "exact_match", "macro_f1") if name == SFT_ARM else ("accuracy", "val_acc", "val_macro_f1")
    )
    scored = [json.loads(x) for x in (result.run_dir / "predictions.jsonl").read_text().splitlines() if x.strip()]
    return {
        "accuracy": f[acc], "macro_f1": f[f1], "val_loss": f.get("val_loss"),
        "correct": {_line(r["origin"]): float(r[score]) for r in scored},
        "wrong": {_line(r["origin"]): r["prediction"] for r in scored if not r[score]},
        "trainable": trainable, "total": total, "wall_s": wall, "tokens_per_s": _mean_speed(result.run_dir),
        "steps": steps, "batch_size": cfg.training.batch_size, "peak_mb": _peak_mb(),
    }  # fmt: skip


def child(args: argparse.Namespace) -> None:
    try:
        work = Path(args.work)
        if args.classify:
            row = run_arm(args.child, args.steps, work)
        elif args.child == BASE:
            row = run_base(args.eval_examples, work)
        else:
            row = run_one(args.child, args.steps, args.eval_examples, work)
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


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"


def table(rows: dict[str, dict], args: argparse.Namespace) -> str:
    import torch

    device = _device()
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


def classify_section(arms: dict[str, dict]) -> str:
    """The classification section of methods.md, from the arms' kept rows (each carries its own budget)."""
    measured = {name: arms[name] for name in ARMS if name in arms and "error" not in arms[name]}
    if not measured:
        return ""
    budgets = sorted({(r["steps"], r["batch_size"]) for r in measured.values()})
    steps, batch = budgets[0]
    n = len(next(iter(measured.values()))["correct"])
    lines = [
        SECTION,
        "",
        f"The same embedded SmolLM2-135M-Instruct on examples/classify (4 topics; 200 training rows, {n} held-out "
        "rows whose things never occur in training), adapted three ways under one budget: "
        f"{steps} optimizer steps of {batch} examples each. `{SFT_ARM}` answers each held-out row greedily (at most "
        "8 new tokens) and is scored by tunelab's exact match against the label; the two head arms take the argmax "
        "of a linear head on the last real token's state (objective `classify`, pooling last). Accuracy, macro-F1 "
        "and each row's result are the runs' own (final metrics, predictions.jsonl). Accuracy: 95% bootstrap "
        f"interval; `vs {CLASS_REFERENCE}`: McNemar's test on the same held-out rows (exact binomial under 25 "
        f"disagreements), the difference in points with its interval. Device: {_device()}.",
        "",
        f"| arm | setup | accuracy | vs {CLASS_REFERENCE} (paired) | macro-F1 | val loss | trainable params | "
        "% of model | wall s | train tok/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reference = measured.get(CLASS_REFERENCE)
    for name in ARMS:
        row = arms.get(name)
        if row is None:
            continue
        if "error" in row:
            lines.append(f"| {name} | {ARMS[name][0]} | not run: {row['error']} | | | | | | | |")
            continue
        paired = "" if reference is None or row is reference else paired_cell(*_paired(reference, row))[0]
        loss = f"{row['val_loss']:.3f}" if row.get("val_loss") is not None else ""
        speed = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else ""
        lines.append(
            f"| {name} | {ARMS[name][0]} | {mean_interval(_results(row))} | {paired} | {row['macro_f1']:.1%} | "
            f"{loss} | {row['trainable']:,} | {row['trainable'] / row['total']:.2%} | {row['wall_s']:.0f} | {speed} |"
        )
    if len(budgets) > 1:
        lines += ["", f"Rows measured with different budgets (steps, batch): {budgets}; not comparable."]
    command = (
        f"Command: `OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/methods.py --classify --steps {steps}` "
        "(rows kept in methods_classify.json; `--only ARM` measures one). One thread on a 2-core CPU shared with "
        "other jobs, so wall times and tokens/s are upper and lower bounds; wall s is training plus evaluation. "
        "Tokens/s counts each arm's own training tokens: label-sft's rows carry the chat template and the question, "
        "so it reads more tokens per step than the head arms."
    )
    return "\n".join([*lines, "", reading(measured), "", command]) + "\n"


def _results(row: dict) -> list[float]:
    """An arm's 0/1 result per held-out row, in file order."""
    return [row["correct"][k] for k in sorted(row["correct"], key=int)]


def _paired(first: dict, second: dict) -> tuple[list[float], list[float]]:
    """Two arms' results on the held-out rows both scored, in file order."""
    shared = sorted(first["correct"].keys() & second["correct"].keys(), key=int)
    return [first["correct"][k] for k in shared], [second["correct"][k] for k in shared]


def reading(measured: dict[str, dict]) -> str:
    """Whether the arms' accuracy intervals separate, pair by pair, and what the paired tests say."""
    from tunelab.eval.stats import bootstrap_ci, compare

    found = {name: bootstrap_ci(_results(row)) for name, row in measured.items()}
    n = len(next(iter(measured.values()))["correct"])
    names = list(found)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            apart = found[a].low > found[b].high or found[b].low > found[a].high
            pairs.append(f"{a} and {b}: intervals {'apart' if apart else 'overlap'}")
    tests = []
    reference = measured.get(CLASS_REFERENCE)
    for name, row in measured.items():
        if reference is not None and row is not reference:
            test = compare(*_paired(reference, row))
            verdict = "differs at 5%" if test.significant else "not shown to differ"
            tests.append(f"{name} vs {CLASS_REFERENCE}: McNemar p {test.p_value:.2g}, {verdict}")
    said = [f"on {n} held-out rows one row is {100 / n:.2g} points", "; ".join(pairs)]
    said += ["; ".join(tests)] if tests else []
    perfect = [name for name, ci in found.items() if ci.low == 1.0]
    if len(perfect) > 1:
        said.append(f"{' and '.join(perfect)} get every held-out row right: at the ceiling, this task cannot rank them")
    gold = [json.loads(x)["label"] for x in (CLASSIFY / "test.jsonl").read_text().splitlines() if x.strip()]
    for name, row in measured.items():
        if row["wrong"]:  # origins number the file's lines from 1
            missed = Counter(gold[int(k) - 1] for k in row["wrong"]).most_common()
            shown = ", ".join(f"{label} ({count})" for label, count in missed)
            said.append(f"{name}'s {len(row['wrong'])} errors are rows of {shown}")
    return "Reading: " + ". ".join(said) + "."


def _generation_part(out: Path) -> str:
    """What methods.md holds before the classification section (the generation table), kept as written."""
    text = out.read_text() if out.is_file() else ""
    return text.split(SECTION, 1)[0].rstrip("\n") + "\n" if text.strip() else ""


def measure(names: list[str], rows: dict[str, dict], args: argparse.Namespace) -> None:
    """Measure each of `names` in its own process into `rows` (a row already in `--rows` is reused)."""
    with tempfile.TemporaryDirectory(prefix="tunelab-methods-") as work:
        keep = args.rows or Path(work)
        keep.mkdir(parents=True, exist_ok=True)
        for name in names:
            result = keep / f"{name}.json"
            if result.is_file() or (args.only and name not in args.only and name in rows):
                rows[name] = json.loads(result.read_text()) if result.is_file() else rows[name]
                continue  # measured by an earlier run of this benchmark
            cmd = [sys.executable, __file__, "--child", name, "--result", str(result), "--work", work,
                   "--steps", str(args.steps), "--eval-examples", str(args.eval_examples),
                   *(["--classify"] if args.classify else [])]  # fmt: skip
            subprocess.run(cmd, check=False)
            rows[name] = json.loads(result.read_text()) if result.is_file() else {"error": "the process died"}
            if not args.classify:
                rows[name]["n"] = args.eval_examples
            shown = rows[name].get("error") or rows[name].get("final") or rows[name]["accuracy"]
            print(f"{name}: {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per method")
    parser.add_argument("--eval-examples", type=int, default=100, help="held-out prompts answered per method")
    parser.add_argument("--only", nargs="*", choices=[*METHODS, *ARMS], help="run only these methods (or arms)")
    parser.add_argument("--classify", action="store_true", help="measure the classification arms instead")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown table to write")
    parser.add_argument("--rows", type=Path, help="keep each method's row here; rows already there are reused")
    parser.add_argument("--table", action="store_true", help="only rewrite the tables from the kept rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    wrong = sorted(set(args.only or []) - set(ARMS if args.classify else METHODS))
    if wrong:
        parser.error(f"--only {' '.join(wrong)}: not {'an arm' if args.classify else 'a method'} of this mode")
    if args.child:
        child(args)
        return
    kept = args.out == OUT  # a table written elsewhere (a smoke run) neither reads nor changes the kept rows
    rows: dict[str, dict] = json.loads(ROWS.read_text()) if ROWS.is_file() and kept else {}
    arms: dict[str, dict] = json.loads(CLASS_ROWS.read_text()) if CLASS_ROWS.is_file() and kept else {}
    if args.classify:
        if not args.table:
            measure(list(args.only or ARMS), arms, args)
        generation = _generation_part(args.out)
    else:
        if not args.table:
            measure([BASE, *(args.only or METHODS)], rows, args)
        generation = table(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if kept and not args.table:
        path, measured = (CLASS_ROWS, arms) if args.classify else (ROWS, rows)
        path.write_text(json.dumps(measured, indent=1) + "\n")
    section = classify_section(arms)
    text = generation + ("\n" + section if generation and section else section)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
