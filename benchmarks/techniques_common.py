"""Shared pieces of the objective demos (benchmarks/techniques_*.py): the dates task, training through
`run_training`, greedy held-out answers and their scores, input perturbations, and the results files.

Each demo writes `benchmarks/results/techniques_<demo>.json` (raw numbers, arguments, machine, wall times) and
`techniques_<demo>.md` (its section of the report); `techniques_report.py` joins the sections into
`benchmarks/results/techniques.md`. With `--smoke` a demo runs tiny and writes under the system temp folder.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATES = ROOT / "examples" / "dates"
RESULTS = ROOT / "benchmarks" / "results"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MODEL = "smollm2-135m"


def rows(split: str) -> list[dict]:
    """The dates task's chat rows (`train` or `test`)."""
    return [json.loads(line) for line in (DATES / f"{split}.jsonl").read_text().splitlines()]


def prompt_and_reference(row: dict) -> tuple[str, str]:
    return row["messages"][0]["content"], row["messages"][-1]["content"]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def train(name: str, work: Path, overrides: list[str], model: str = MODEL):
    """A run of `run_training` in `work/name` (no generation eval: the demos score answers themselves)."""
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.recipes.run import run_training

    cfg = load_config(None, [
        f"model.source={model}", "training.log_every=1", "eval.generate=false", "eval.baseline=false",
        f"output.dir={work}", f"output.name={name}", "output.overwrite=true", *overrides,
    ])  # fmt: skip
    start = time.perf_counter()
    result = run_training(cfg, console=Console(quiet=True))
    return result, time.perf_counter() - start


def answer(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy answers (bf16 autocast where the CPU has fast bf16, as training uses)."""
    import torch

    from tunelab.core.device import use_bf16
    from tunelab.core.types import Message
    from tunelab.models.generate import generate_answers

    bf16 = use_bf16("auto", torch.device("cpu"))
    return generate_answers(
        model, tokenizer, [[Message("user", p)] for p in prompts], max_new_tokens=max_new_tokens, batch_size=16,
        show_progress=False, precision="bf16" if bf16 else "fp32",
    )  # fmt: skip


def score(answers: list[str], references: list[str]) -> dict[str, float]:
    """Exact match and ISO-format rate (the answer is a YYYY-MM-DD date and nothing else)."""
    n = max(len(answers), 1)
    return {
        "exact_match": sum(a.strip() == r for a, r in zip(answers, references, strict=True)) / n,
        "iso_format": sum(bool(ISO.match(a.strip())) for a in answers) / n,
    }


def reward(answer_text: str, reference: str) -> float:
    """The demos' preference: ISO format (1) plus the right date (1)."""
    return float(bool(ISO.match(answer_text.strip()))) + float(answer_text.strip() == reference)


def typos(text: str, rng: random.Random, rate: float = 0.15) -> str:
    """Swap two adjacent letters in about `rate` of the words longer than 3 letters (digits are left alone)."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) > 3 and w.isalpha() and rng.random() < rate:
            k = rng.randrange(len(w) - 1)
            words[i] = w[:k] + w[k + 1] + w[k] + w[k + 2 :]
    return " ".join(words)


DISTRACTORS = [
    "Note: the office is closed on public holidays.",
    "Reference code 7731-B applies to all orders.",
    "Please keep this message for your records.",
]


def perturbations(prompt: str, seed: int) -> dict[str, str]:
    """The prompt with typos, in upper case, and with a distractor sentence appended."""
    rng = random.Random(seed)
    return {"typos": typos(prompt, rng), "casing": prompt.upper(), "distractor": f"{prompt}\n{rng.choice(DISTRACTORS)}"}


def device_note() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"CPU ({cpu}, {os.cpu_count()} cores, torch using {threads} threads), torch {torch.__version__}"


def shared_note() -> str:
    import torch

    return (
        f"Ran with {torch.get_num_threads()} thread(s) on a 2-core CPU shared with other jobs, so wall and train "
        "times are upper bounds."
    )


def command(demo: str) -> str:
    """The exact command line this demo was started with (with OMP_NUM_THREADS when it was set)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = [f"OMP_NUM_THREADS={threads}"] if threads else []
    return " ".join([*prefix, ".venv/bin/python", f"benchmarks/techniques_{demo}.py", *sys.argv[1:]])


def results_dir(smoke: bool) -> Path:
    """Where results go: benchmarks/results, or a temp folder for smoke runs (never mistaken for results)."""
    return Path(tempfile.gettempdir()) / "tunelab-techniques-smoke" if smoke else RESULTS


def save(demo: str, payload: dict, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"techniques_{demo}.json"
    path.write_text(json.dumps({**payload, "command": command(demo), "device": device_note()}, indent=2))
    return path


def write_section(demo: str, lines: list[str], out: Path = RESULTS) -> Path:
    """The demo's section of the report (markdown starting with `## Title`), with the device note appended."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"techniques_{demo}.md"
    path.write_text("\n".join([*lines, "", f"Device: {device_note()}. {shared_note()}", ""]))
    print(path.read_text(), flush=True)
    return path


def pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def rate_interval(rate: float, n: int) -> dict[str, float]:
    """95% bootstrap interval of a rate kept only as a share of n 0/1 results (older demo JSON): the bootstrap of a
    mean of 0/1 values depends on the count of ones alone, so the rebuilt vector gives the interval the per-example
    scores would have."""
    from tunelab.eval.stats import bootstrap_ci

    ones = round(rate * n)
    return bootstrap_ci([1.0] * ones + [0.0] * (n - ones)).to_dict()


def mean_interval(values: list[float], percent: bool = True) -> str:
    """A mean of per-example scores with its 95% bootstrap interval, as text."""
    from tunelab.eval.stats import bootstrap_ci

    return interval_cell(bootstrap_ci(values).to_dict(), percent)


def interval_cell(found: dict[str, float], percent: bool = True) -> str:
    """An interval document as "x [low, high]" (in % when `percent`)."""
    if percent:
        return f"{found['estimate']:.1%} [{100 * found['low']:.1f}, {100 * found['high']:.1f}]"
    return f"{found['estimate']:.2f} [{found['low']:.2f}, {found['high']:.2f}]"


def paired_cell(first: list[float], second: list[float], percent: bool = True) -> tuple[str, bool]:
    """The paired test of two arms' per-example scores on the same prompts (McNemar for 0/1, else paired
    bootstrap; second - first), as text, and whether it is significant at 5%."""
    from tunelab.eval.stats import compare

    test = compare(first, second)
    d, scale, unit = test.delta, 100 if percent else 1, " pp" if percent else ""
    mark = "" if test.significant else ", n.s."
    text = f"{scale * d.estimate:+.3g}{unit} [{scale * d.low:+.3g}, {scale * d.high:+.3g}], p {test.p_value:.2g}{mark}"
    return text, test.significant


def overlap_note(rates: dict[str, float], n: int, reference: str) -> str:
    """For arms kept only as rates on n prompts: which differ from `reference` by more than their 95% intervals
    allow (intervals disjoint) and which are within noise. Disjoint intervals are a conservative sign of a real
    difference; overlapping ones do not rule one out, a paired test on the per-example results would be needed."""
    ref = rate_interval(rates[reference], n)
    apart, within = [], []
    for name, rate in rates.items():
        if name == reference:
            continue
        found = rate_interval(rate, n)
        (apart if found["low"] > ref["high"] or found["high"] < ref["low"] else within).append(name)
    return (f"Against {reference} on {n} prompts, intervals apart: {', '.join(apart) or 'none'}; overlapping "
            f"(not shown to differ): {', '.join(within) or 'none'}.")  # fmt: skip


def parameters(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
