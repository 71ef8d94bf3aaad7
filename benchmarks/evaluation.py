"""The whole evaluation on the dates demo model: SmolLM2-135M-Instruct tuned by the dates LoRA run (examples/dates).

Every step is the tunelab command a user would type, run on the demo run folder; the tables below are built from
the files those commands wrote (with `tunelab.eval.report_tables`, the report's own cells):

1. `tunelab train examples/dates/config.yaml` (validation every 25 steps, so the diagnosis has a curve): base vs
   tuned on the 200 held-out prompts with intervals and paired tests (eval_stats.json), the fitting diagnosis.
2. `tunelab eval RUN --suite robustness`: every perturbation of the held-out prompts, base and tuned.
3. `tunelab eval RUN --suite bias` on the held-out prompts and on probe prompts written here (a sentence with a
   name, a nationality, ... before a held-out question: the date asked for does not depend on it).
4. `tunelab explain RUN --prompt ...` (integrated gradients) on one held-out prompt.
5. `tunelab eval RUN --base --harness dates_iso --harness-tasks-dir examples/harness` (lm-evaluation-harness).

Writes benchmarks/results/evaluation.md and evaluation.json. A step whose output is already in the run folder is
not run again (`--fresh` runs everything), so an interrupted run continues.

    nice -n 10 .venv/bin/python benchmarks/evaluation.py [--run DIR] [--suite-rows 200] [--bias-rows 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab.eval.report_tables import bias_rows, metric_rows, robustness_rows, test_text  # noqa: E402

DATES = ROOT / "examples" / "dates"
RESULTS = ROOT / "benchmarks" / "results"
TUNELAB = str(Path(sys.executable).with_name("tunelab"))
PROBES = {
    "gender": "My sister forwarded this, she needs it today. ",
    "names": "Maria sent this over. ",
    "nationality": "A Mexican customer writes: ",
    "religion": "From the church office: ",
    "age": "My 70-year-old neighbour asks: ",
}
"""Probe sentences put before held-out prompts: each names one attribute's listed terms, which the bias suite swaps
into every other group (sister/she -> brother/he; Maria -> Emily, Lakisha, Mei, ...). The date asked for does not
depend on them, so any change of the answer or of its probability is the attribute's doing."""
FEW_PAIRS = 10
"""Below this many pairs an attribute's rates and gaps are not read as evidence either way."""
EXPLAIN_ROW = 3
"""The held-out row whose answer `tunelab explain` attributes."""


def tunelab(args: list[str], log: Path) -> float:
    """Run one tunelab command (its output appended to `log`); returns its wall time. A failure stops the demo."""
    shown = "tunelab " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {shown}\n")
        out.flush()
        done = subprocess.run([TUNELAB, *args], stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"'{shown}' failed (exit {done.returncode}); its output is in {log}")
    return time.perf_counter() - start


def chat_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATES / "test.jsonl").read_text().splitlines()]


def probe_file(path: Path, rows: int) -> Path:
    """The bias probe's data: each sentence of PROBES before each of the first `rows` held-out prompts."""
    out = []
    for lead in PROBES.values():
        for row in chat_rows()[:rows]:
            question, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
            out.append({"messages": [{"role": "user", "content": lead + question},
                                     {"role": "assistant", "content": answer}]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def train_overrides(args: argparse.Namespace, run: Path) -> list[str]:
    """The demo config with this run's folder; with --train-rows/--test-rows, the first rows of the demo data."""
    sets = [f"output.dir={run.parent}", f"output.name={run.name}"]
    if args.eval_every:
        sets.append(f"training.eval_every={args.eval_every}")
    for split, rows, key in (("train", args.train_rows, "data.train"), ("test", args.test_rows, "data.validation")):
        if rows:
            lines = (DATES / f"{split}.jsonl").read_text().splitlines()[:rows]
            part = run.parent / f"{split}_{rows}.jsonl"
            part.write_text("".join(x + "\n" for x in lines))
            sets.append(f"{key}={part}")
    if args.test_rows:
        sets.append(f"eval.max_examples={args.test_rows}")
    return [x for s in sets for x in ("--set", s)]


def run_steps(args: argparse.Namespace, run: Path, log: Path) -> dict[str, float]:
    """Every step whose output is missing (or all with --fresh; only those of --only); the wall time of each, kept
    beside the run folder so that steps run by separate invocations (in parallel) are all reported."""
    test = str(DATES / "test.jsonl")
    common = ["--max-new-tokens", "24", "--bf16", "--seed", "0"]
    steps = {
        "train": (run / "eval_stats.json", ["train", str(DATES / "config.yaml"), *train_overrides(args, run)]),
        "robustness": (
            run / "eval" / "robustness.json",
            [
                "eval",
                str(run),
                "--data",
                test,
                "--suite",
                "robustness",
                "--max-examples",
                str(args.suite_rows),
                *common,
            ],
        ),
        "bias_heldout": (
            run / "bias_heldout" / "bias.json",
            ["eval", str(run), "--data", test, "--suite", "bias", "--suite-out", str(run / "bias_heldout"), *common],
        ),
        "bias_probes": (
            run / "bias_probes" / "bias.json",
            [
                "eval",
                str(run),
                "--data",
                str(probe_file(run.parent / "bias_probes.jsonl", args.bias_rows)),
                "--suite",
                "bias",
                "--suite-out",
                str(run / "bias_probes"),
                *common,
            ],
        ),
        "explain": (
            run / "explain" / "ig.json",
            [
                "explain",
                str(run),
                "--prompt",
                chat_rows()[EXPLAIN_ROW]["messages"][0]["content"],
                "--method",
                "ig",
                "--max-new-tokens",
                "16",
            ],
        ),
        "harness": (
            run / "harness" / "harness.json",
            [
                "eval",
                str(run),
                "--base",
                "--harness",
                "dates_iso",
                "--harness-tasks-dir",
                str(ROOT / "examples" / "harness"),
                "--max-examples",
                str(args.harness_rows),
            ],
        ),
    }
    kept = run.parent / f"{run.name}_times.json"
    times = json.loads(kept.read_text()) if kept.is_file() and not args.fresh else {}  # other invocations' steps
    for name, (output, command) in steps.items():
        if (args.fresh or not output.is_file()) and (not args.only or name in args.only):
            times[name] = tunelab(command, log)
            kept.write_text(json.dumps(times))
    return times


STEPS = ("train", "robustness", "bias_heldout", "bias_probes", "explain", "harness")
OUTPUTS = ("eval_stats.json", "eval/robustness.json", "bias_heldout/bias.json", "bias_probes/bias.json",
           "explain/ig.json", "harness/harness.json")  # fmt: skip


def done(run: Path) -> list[bool]:
    """Whether each step's output is in the run folder."""
    return [(run / name).is_file() for name in OUTPUTS]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(map(cell, r)) + " |" for r in rows], ""]  # fmt: skip


def significant_metrics(stats: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Metrics whose paired difference is significant, and those whose is not."""
    tests = stats.get("tests", {})
    return [m for m, t in tests.items() if t["significant"]], [m for m, t in tests.items() if not t["significant"]]


def run_description(run: Path) -> str:
    """What the run is, read from its own files: data sizes, steps, validation schedule, where the report is."""
    data = load(run / "data_report.json")
    config = yaml.safe_load((run / "config.yaml").read_text())
    steps = max(json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip())
    every, train = config["training"].get("eval_every"), config["training"]
    return (
        "SmolLM2-135M-Instruct (embedded) and its dates LoRA run (examples/dates/config.yaml: LoRA r "
        f"{config['method']['r']}, lr {train['learning_rate']:g}, batch {train['batch_size']}, {train['epochs']} "
        f"epoch) on {data['train_records']:,} training rows, {steps} optimizer steps, "
        f"{data['val_records']} held-out rows, validation "
        f"{f'every {every} steps' if every else 'at the end only'}. Every table is built from the files the tunelab "
        f"commands wrote in the run folder; the run's whole report (metrics, plots, per-example diffs, diagnosis, "
        f"robustness) is `{run / 'report.html'}` (and report.md)."
    )


def heldout_section(run: Path) -> list[str]:
    stats = load(run / "eval_stats.json")
    header, rows, _ = metric_rows(stats)
    final = load(run / "eval.json")
    base = load(run / "eval_baseline.json")
    good, unsure = significant_metrics(stats)
    em = stats["intervals"]["tuned"]["exact_match"]
    lines = [
        "## Base vs tuned on the held-out prompts",
        "",
        f"The first {stats['examples']} of the 200 rows of examples/dates/test.jsonl (no test date appears in a "
        "training prompt), "
        "greedy, at most 24 new tokens; 95% bootstrap intervals, McNemar's test for 0/1 scores and a paired bootstrap "
        "otherwise (`eval_stats.json`).",
        "",
        *md_table(header, rows),
        f"Validation loss {base.get('val_loss', float('nan')):.4f} → {final['val_loss']:.4f}, perplexity "
        f"{base.get('val_ppl', float('nan')):.3f} → {final['val_ppl']:.3f}, token accuracy "
        f"{100 * base.get('val_token_acc', float('nan')):.1f}% → {100 * final['val_token_acc']:.1f}%.",
        "",
        f"Reading: significant at 5%: {', '.join(good) or 'none'}; not significant: {', '.join(unsure) or 'none'}. "
        f"With n = {stats['examples']} the tuned exact match is known to ±{100 * (em['high'] - em['low']) / 2:.1f} "
        "points; a difference between two tuned runs smaller than about that would need a paired test to be told "
        "apart.",
        "",
    ]
    return lines


def robustness_section(run: Path) -> list[str]:
    doc = load(run / "eval" / "robustness.json")
    header, rows, _ = robustness_rows(doc)
    reading = []
    for entry in doc["perturbations"]:
        per = entry["models"]
        said = []
        for model in doc["models"]:
            change = per.get(model, {}).get("change")
            if change:
                d, ok = change["delta"], test_text(change, 100)[1]  # the Holm-adjusted verdict the table shows
                raw = change.get("significant_unadjusted", change["significant"])
                verdict = "significant" if ok else "n.s. after Holm's adjustment" if raw else "n.s."
                said.append(f"{model} {100 * d['estimate']:+.1f} pp ({verdict}, "
                            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}])")  # fmt: skip
        reading.append(f"{entry['name']}: {'; '.join(said)}")
    notes = doc.get("notes", [])
    reading.append(too_wide(doc))
    return [
        "## Robustness suite",
        "",
        f"`tunelab eval RUN --suite robustness` on the first {doc['rows']} held-out prompts (seed {doc['seed']}, typo "
        f"rate {doc['typo_rate']}, paraphraser: {doc.get('paraphraser') or 'none'}); metric {doc['metric']}. Each "
        "change is from the same model's clean score on the same rows (McNemar, Holm-adjusted over the "
        "perturbations); `rows changed` counts prompts the perturbation altered, of those scored.",
        "",
        *md_table(header, rows),
        "Change from clean: " + ". ".join(reading),
        "",
        f"{len(notes)} per-row note(s) (failed perturbations, prompts over the context) in robustness.json.",
        "",
    ]


def too_wide(doc: dict[str, Any]) -> str:
    """Where the robustness intervals are too wide to conclude: the widest change not shown to differ from zero,
    and models whose clean score is zero (they cannot drop)."""
    zero = [m for m in doc["models"] if doc["clean"].get(m, {}).get("estimate", 1) == 0]
    widest: dict[str, float] = {}
    for entry in doc["perturbations"]:
        for model, found in entry["models"].items():
            change = found.get("change")
            if change and not change["significant"] and model not in zero:
                half = 50 * (change["delta"]["high"] - change["delta"]["low"])
                widest[model] = max(widest.get(model, 0.0), half)
    said = [f"{m}: changes up to ±{w:.0f} pp cannot be told from none on {doc['rows']} rows" for m, w in widest.items()]
    if zero:
        said.append(f"{', '.join(zero)} score 0 clean, so no perturbation can lower them: their rows say nothing about "
                    "robustness")  # fmt: skip
    return "Too wide to conclude: " + "; ".join(said) + "." if said else "All intervals are narrow enough to read."


def bias_section(run: Path, name: str, about: str) -> list[str]:
    doc = load(run / name / "bias.json")
    header, rows, worst = bias_rows(doc)
    probed = [a for a in doc["attributes"] if a["pairs"]]
    compare = []
    for entry in probed:
        test = entry.get("comparison", {}).get("mean_abs_gap")
        if test:
            d = test["delta"]
            compare.append(f"{entry['attribute']} {d['estimate']:+.3g} nats [{d['low']:+.3g}, {d['high']:+.3g}]"
                           f"{'' if test['significant'] else ' n.s.'}")  # fmt: skip
    lines = [f"### {about}", "", *md_table(header, rows)]
    few = [f"{a['attribute']} ({a['pairs']})" for a in probed if a["pairs"] < FEW_PAIRS]
    absent = [a["attribute"] for a in doc["attributes"] if not a["pairs"]]
    if few or absent:
        lines += [f"Too few pairs to conclude (under {FEW_PAIRS}): {', '.join(few) or 'none'}; no pair at all: "
                  f"{', '.join(absent) or 'none'}.", ""]  # fmt: skip
    if compare:
        lines += ["Tuned minus base, mean |gap|: " + "; ".join(compare) + ".", ""]
    if worst:
        shown = [[w["attribute"], w["model"], w["text"][:90], w["counterfactual"][:90], f"{w['gap']:+.3g}"]
                 for w in sorted(worst, key=lambda w: -abs(w["gap"]))[:6]]  # fmt: skip
        lines += ["Worst pairs (largest |gap|):", "", *md_table(["attribute", "model", "text", "counterfactual",
                                                                  "gap"], shown)]  # fmt: skip
    return lines


def diagnosis_section(run: Path) -> list[str]:
    doc = load(run / "diagnosis.json")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    validations = sum("val_loss" in json.loads(x) for x in lines if x.strip())
    return [
        f"## Fitting diagnosis: {doc['verdict']}",
        "",
        f"Written by the run from metrics.jsonl ({validations} validation point(s)); learning curves in "
        f"`{run / 'learning_curves.png'}`.",
        "",
        *[f"- {x}" for x in doc["evidence"]],
        "",
        "Advice: " + " ".join(doc["advice"]),
        "",
    ]


def explain_section(run: Path) -> list[str]:
    doc = load(run / "explain" / "ig.json")
    own = [i for i, p in enumerate(doc["parts"]) if p != "template"]
    top = sorted(own, key=lambda i: -doc["scores"][i])[:6]
    total = sum(doc["scores"])
    return [
        "## An explanation",
        "",
        f"`tunelab explain RUN --prompt ... --method ig` on held-out row {EXPLAIN_ROW + 1}: integrated gradients of "
        f"log p(answer | prompt) for the tuned model's answer `{doc['target']}`.",
        "",
        f"Prompt: `{chat_rows()[EXPLAIN_ROW]['messages'][0]['content']}`",
        "",
        "Most supporting tokens: " + ", ".join(f"`{doc['tokens'][i]!r}` {doc['scores'][i]:+.3g}" for i in top) + ".",
        "",
        f"Completeness: score {doc['score']:.4f}, baseline {doc['baseline_score']:.4f}, attributions sum "
        f"{total:.4f} (convergence delta {doc['delta']:.1e}, {doc['steps']} steps). Heat map: "
        f"`{run / 'explain' / 'ig.html'}`.",
        "",
    ]


def harness_section(run: Path) -> list[str]:
    doc = load(run / "harness" / "harness.json")
    header, rows, _ = metric_rows(doc["comparison"])
    return [
        "## lm-evaluation-harness",
        "",
        "`tunelab eval RUN --base --harness dates_iso --harness-tasks-dir examples/harness`: the dates test set as "
        "an lm-eval `generate_until` task (examples/harness/dates.yaml; prompt in the chat template, stop at a "
        f"newline, 16 tokens), {doc['comparison']['examples']} documents, lm-eval's own exact_match.",
        "",
        *md_table(header, rows),
    ]


BIAS_LIMITS = (
    "What the probe can show: whether swapping the listed terms changes these models' answers or the "
    "log-probability of the same answer, by how much and on which pairs. What it cannot show: that either model is "
    "fair. The dates task never depends on the attribute, so a gap here is sensitivity to irrelevant words (the "
    "same thing the robustness suite measures), not evidence about any group; a small gap holds for these lists, "
    "prompts and task only, and a name suggests an origin, it does not give one."
)


def missing(step: str) -> list[str]:
    """The lines standing for a step that has not written its output (yet): what it is and how to run it."""
    return [f"### Not measured: {step}", "", f"`{OUTPUTS[STEPS.index(step)]}` is not in the run folder: this step did "
            f"not finish before these results were written. Run it with `benchmarks/evaluation.py --only {step}`.",
            ""]  # fmt: skip


def sections(args: argparse.Namespace, run: Path) -> list[str]:
    """Every section whose step has run; for the others, a line saying so."""
    probes = f"Probe sentences before the first {args.bias_rows} held-out prompts: " + "; ".join(
        f"`{p.strip()}`" for p in PROBES.values()
    )
    parts = {
        "train": lambda: [*heldout_section(run), *diagnosis_section(run)],
        "robustness": lambda: robustness_section(run),
        "bias_heldout": lambda: [
            "## Bias probe",
            "",
            BIAS_LIMITS,
            "",
            *bias_section(run, "bias_heldout", "Held-out prompts as they are (terms found in them swapped)"),
        ],
        "bias_probes": lambda: bias_section(run, "bias_probes", probes),
        "explain": lambda: explain_section(run),
        "harness": lambda: harness_section(run),
    }
    return [
        line for step, ok in zip(STEPS, done(run), strict=True) for line in (parts[step]() if ok else missing(step))
    ]


def command_args(args: argparse.Namespace) -> list[str]:
    """The arguments that reproduce these results (the sizes; not how the steps were split between processes)."""
    out = ["--run", args.run, "--suite-rows", str(args.suite_rows), "--bias-rows", str(args.bias_rows),
           "--harness-rows", str(args.harness_rows), "--eval-every", str(args.eval_every)]  # fmt: skip
    for flag, value in (("--train-rows", args.train_rows), ("--test-rows", args.test_rows)):
        out += [flag, str(value)] if value else []
    return out


def write_results(args: argparse.Namespace, run: Path, times: dict[str, float]) -> None:
    """evaluation.md from the run folder's files, and evaluation.json with the documents the tables come from."""
    parts = [
        "# Evaluation of the dates demo model",
        "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/evaluation.py {shlex.join(command_args(args))}`",
        "",
        run_description(run),
        "",
        *([args.note, ""] if args.note else []),
        *sections(args, run),
        f"Wall time of each step: {', '.join(f'{k} {v:.0f} s' for k, v in times.items()) or 'none recorded'}. "
        f"Device: CPU ({platform.machine()}, {os.cpu_count()} cores shared with other jobs), so times are upper "
        "bounds.",
        "",
    ]
    RESULTS.joinpath("evaluation.md").write_text("\n".join(parts))
    documents = {step: load(run / name) for step, name in zip(STEPS, OUTPUTS, strict=True) if (run / name).is_file()}
    if "harness" in documents:
        documents["harness"] = documents["harness"]["comparison"]
    if (run / "diagnosis.json").is_file():
        documents["diagnosis"] = load(run / "diagnosis.json")
    RESULTS.joinpath("evaluation.json").write_text(json.dumps({"args": vars(args), "times": times, **documents},
                                                              indent=1, default=str) + "\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/dates-eval", help="the demo run folder (trained when missing)")
    parser.add_argument("--suite-rows", type=int, default=200, help="held-out prompts the robustness suite perturbs")
    parser.add_argument("--bias-rows", type=int, default=10, help="held-out prompts behind each probe sentence")
    parser.add_argument("--harness-rows", type=int, default=200, help="documents lm-evaluation-harness scores")
    parser.add_argument("--train-rows", type=int, help="train on the first N demo rows (default: all 2,000)")
    parser.add_argument("--test-rows", type=int, help="validate and compare on the first N test rows (default: 200)")
    parser.add_argument("--eval-every", type=int, default=25, help="validation every N steps (0: only at the end)")
    parser.add_argument("--note", default="", help="a sentence on where the run folder came from, for the report")
    parser.add_argument("--only", nargs="*", choices=STEPS, help="run only these steps (others in another process)")
    parser.add_argument(
        "--write", action="store_true", help="run nothing: write the results of the steps that have run"
    )
    parser.add_argument("--fresh", action="store_true", help="run every step again, even those already done")
    args = parser.parse_args()
    run = Path(args.run).resolve()
    run.parent.mkdir(parents=True, exist_ok=True)
    kept = run.parent / f"{run.name}_times.json"
    if args.write:  # no step runs: the results of those that have, now
        write_results(args, run, json.loads(kept.read_text()) if kept.is_file() else {})
        return
    times = run_steps(args, run, run.parent / f"{run.name}.log")
    if args.only and not all(done(run)):
        print("the other steps are still to run; the results are written when all have run (or with --write)")
        return
    write_results(args, run, times)
    print(f"wrote {RESULTS / 'evaluation.md'}")


if __name__ == "__main__":
    main()
