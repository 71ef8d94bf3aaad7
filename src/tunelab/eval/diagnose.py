"""Fitting diagnosis of a finished run, from what its training loop wrote to metrics.jsonl: a verdict (underfitting,
good fit, overfitting, unstable), the evidence behind it and what to change in the config.

Training lines carry `loss` (the mean over the step's targets) and `lr`; validation lines carry `val_loss` (one per
`training.eval_every` or epoch, and a last one marked `final`). The run's `eval_baseline.json`, when there, gives
the validation loss before training, which is the fairest yardstick for "did it learn at all". Batch losses are
noisy (each is one batch), so train-loss comparisons use means over quarters of the run, never single points.

The thresholds below are rules of thumb, stated as numbers so the evidence can quote them; the verdict is the
first of unstable, overfitting, underfitting that its evidence supports, else a good fit.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from matplotlib.figure import Figure  # a figure without pyplot: no global state, no display

from tunelab.core.errors import RunError
from tunelab.core.files import write_text
from tunelab.train.metrics import parse_metric_lines

Verdict = Literal["underfitting", "good fit", "overfitting", "unstable", "unknown"]

RISE = 0.05
"""Validation loss this far (relative) above its minimum at the end of training counts as turning up."""
LEARNED = 0.10
"""A relative fall of the loss smaller than this over the whole run counts as not having learned."""
STILL_FALLING = 0.03
"""Validation loss that fell this much (relative) over the last quarter of validations is still improving."""
PLATEAU = 0.01
"""Train loss that moved less than this (relative) over the second half of training has plateaued."""
GAP = 1.0
"""Validation loss more than (1 + GAP) times the train loss is a wide generalisation gap."""
SPIKE = 2.0
"""A train loss more than SPIKE times the median of the five before it is a spike."""
SPIKES_UNSTABLE = 2
"""This many spikes (or any skipped NaN/inf step) make a run unstable."""
DIAGNOSIS_FILE = "diagnosis.json"
CURVES_FILE = "learning_curves.png"


@dataclass
class Curves:
    """The loss curves of a run: (step, value) pairs of train loss, learning rate and validation loss."""

    train: list[tuple[int, float]]
    lr: list[tuple[int, float]]
    val: list[tuple[int, float]]
    skipped_steps: int = 0
    baseline_val: float | None = None
    """Validation loss of the model before training (`eval_baseline.json`), if the run measured it."""


@dataclass
class Diagnosis:
    verdict: Verdict
    evidence: list[str]
    advice: list[str]
    numbers: dict[str, float | int | None] = field(default_factory=dict)
    """What the evidence quotes: first/last train loss, best and last validation loss and step, gap, spikes."""

    def summary(self) -> str:
        """One line for the end of a run: the verdict and its first piece of evidence."""
        return f"fitting: {self.verdict}" + (f" ({self.evidence[0]})" if self.evidence else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def curves_from_lines(lines: list[dict[str, Any]], baseline_val: float | None = None) -> Curves:
    """The curves in metrics.jsonl lines: lines with `loss` are training steps, lines with `val_loss` validations
    (the final validation repeats the last step's when no training happened since; it is kept once)."""
    train = [(int(x["step"]), float(x["loss"])) for x in lines if "loss" in x]
    lr = [(int(x["step"]), float(x["lr"])) for x in lines if "lr" in x]
    val: list[tuple[int, float]] = []
    for x in lines:
        if "val_loss" in x:
            point = (int(x["step"]), float(x["val_loss"]))
            if val and val[-1][0] == point[0]:
                val[-1] = point
            else:
                val.append(point)
    skipped = max((int(x.get("skipped_steps", 0)) for x in lines), default=0)
    return Curves(train, lr, val, skipped, baseline_val)


def read_curves(run_dir: Path) -> Curves:
    """A run folder's curves (metrics.jsonl) and its pre-training validation loss (eval_baseline.json)."""
    if not (run_dir / "metrics.jsonl").is_file():
        raise RunError(
            f"'{run_dir}' has no metrics.jsonl, so there is nothing to diagnose. Give the folder `tunelab train` "
            "wrote (it writes metrics.jsonl as training goes)."
        )
    lines, bad = parse_metric_lines(run_dir / "metrics.jsonl")
    if bad:
        number, why = bad[0]
        raise RunError(
            f"{run_dir / 'metrics.jsonl'}:{number} is not JSON ({why}). The file is the one training "
            "appends to; a line cut short by a crash can be deleted."
        )
    baseline = None
    base_file = run_dir / "eval_baseline.json"
    if base_file.is_file():
        baseline = json.loads(base_file.read_text()).get("val_loss")
    return curves_from_lines(lines, baseline)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _quarters(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter (at least one value each)."""
    k = max(1, len(values) // 4)
    return _mean(values[:k]), _mean(values[-k:])


def spikes(train: list[tuple[int, float]]) -> list[int]:
    """Steps whose train loss is non-finite or more than SPIKE times the median of the five losses before it."""
    found = []
    for i, (step, loss) in enumerate(train):
        before = [v for _, v in train[max(0, i - 5) : i] if math.isfinite(v)]
        if not math.isfinite(loss) or (len(before) >= 3 and loss > SPIKE * statistics.median(before)):
            found.append(step)
    return found


def diagnose(curves: Curves) -> Diagnosis:
    """The verdict, evidence and advice for one run's curves (see the module docstring for the rules)."""
    finite = [v for _, v in curves.train if math.isfinite(v)]
    if len(finite) < 2 and len(curves.val) < 2 and not (curves.val and curves.baseline_val is not None):
        return Diagnosis("unknown", ["too few logged points to judge (fewer than two train losses and two "
                                     "validations)"], ["log more often (training.log_every) or validate "
                                                       "(training.eval_every, a validation split)"])  # fmt: skip
    numbers = _numbers(curves, finite)
    for check in (_unstable, _overfitting, _underfitting):
        found = check(curves, numbers)
        if found is not None:
            verdict, evidence, advice = found
            return Diagnosis(verdict, evidence + _context(curves, numbers), advice, numbers)
    return Diagnosis("good fit", _good_evidence(curves, numbers) + _context(curves, numbers),
                     _good_advice(numbers), numbers)  # fmt: skip


def _numbers(curves: Curves, finite: list[float]) -> dict[str, float | int | None]:
    first, last = _quarters(finite) if finite else (None, None)
    numbers: dict[str, float | int | None] = {"train_loss_start": first, "train_loss_end": last,
                                              "spikes": len(spikes(curves.train)),
                                              "skipped_steps": curves.skipped_steps,
                                              "baseline_val_loss": curves.baseline_val}  # fmt: skip
    if curves.val:
        best_step, best = min(curves.val, key=lambda p: p[1])
        numbers.update(best_val_loss=best, best_val_step=best_step, val_loss_end=curves.val[-1][1],
                       val_loss_start=curves.val[0][1], last_step=curves.val[-1][0])  # fmt: skip
        if last is not None:
            numbers["gap"] = curves.val[-1][1] - last
    return numbers


Found = tuple[Verdict, list[str], list[str]] | None


def _unstable(curves: Curves, n: dict[str, Any]) -> Found:
    evidence = []
    if curves.skipped_steps:
        evidence.append(f"{curves.skipped_steps} step(s) had a NaN or infinite loss and were skipped")
    if n["spikes"] >= SPIKES_UNSTABLE:
        at = ", ".join(str(s) for s in spikes(curves.train)[:5])
        evidence.append(f"{n['spikes']} loss spikes (over {SPIKE:g}x the recent median) at step(s) {at}")
    start, end = n["train_loss_start"], n["train_loss_end"]
    if start is not None and end is not None and len(curves.train) >= 4 and end > start * (1 + RISE):
        evidence.append(f"train loss rose from {start:.4g} (first quarter) to {end:.4g} (last quarter): diverging")
    if not evidence:
        return None
    return (
        "unstable",
        evidence,
        [
            "lower training.learning_rate (by 3-10x) or lengthen warmup (training.warmup_ratio)",
            "clip gradients (training.max_grad_norm=1.0) and train in training.precision=fp32 if bf16 overflows",
            "look for broken or extreme rows in the data (tunelab data inspect)",
        ],
    )


def _overfitting(curves: Curves, n: dict[str, Any]) -> Found:
    if len(curves.val) < 2:
        return None
    best, end, best_step = n["best_val_loss"], n["val_loss_end"], n["best_val_step"]
    evidence = []
    if end > best * (1 + RISE) and best_step < n["last_step"]:
        evidence.append(f"validation loss turned up: best {best:.4g} at step {best_step}, {end:.4g} at the end "
                        f"(+{end / best - 1:.0%})")  # fmt: skip
    train_end = n["train_loss_end"]
    if train_end is not None and end > (1 + GAP) * train_end and end >= best * (1 - STILL_FALLING):
        evidence.append(f"validation loss {end:.4g} is {end / max(train_end, 1e-12):.1f}x the train loss "
                        f"{train_end:.4g} and no longer falling")  # fmt: skip
    if not evidence:
        return None
    return (
        "overfitting",
        evidence,
        [
            f"stop early: training.early_stopping_patience=2 keeps the best weights (here step {best_step}), or "
            "fewer training.epochs",
            "regularise more: training.weight_decay, training.dropout, a smaller LoRA rank (method.r)",
            "more (or more varied) training data: data.augment",
        ],
    )


def _underfitting(curves: Curves, n: dict[str, Any]) -> Found:
    evidence = []
    start, end = n["train_loss_start"], n["train_loss_end"]
    reference = n["baseline_val_loss"] if n["baseline_val_loss"] is not None else n.get("val_loss_start")
    if reference is not None and curves.val and n["best_val_loss"] > reference * (1 - LEARNED):
        evidence.append(f"validation loss fell only {1 - n['best_val_loss'] / reference:.1%} "
                        f"({reference:.4g} → {n['best_val_loss']:.4g})")  # fmt: skip
    elif start is not None and end is not None and len(curves.train) >= 4 and end > start * (1 - LEARNED):
        evidence.append(f"train loss fell only {1 - end / start:.1%} ({start:.4g} → {end:.4g})")
    advice = []
    if evidence:
        advice += ["a higher training.learning_rate (3-10x), or more trainable capacity (a larger LoRA rank "
                   "method.r, or method.name=full)", "check that the answers are learnable from the prompts "
                   "(tunelab data inspect)"]  # fmt: skip
    if _still_falling(curves):
        evidence.append("validation loss was still falling at the end of training")
        advice.insert(0, "train longer: more training.epochs (the validation loss has not reached its minimum)")
    return ("underfitting", evidence, advice) if evidence else None


def _still_falling(curves: Curves) -> bool:
    vals = [v for _, v in curves.val]
    if len(vals) < 3 or min(vals) != vals[-1]:
        return False
    k = max(2, len(vals) // 4 + 1)
    return vals[-1] < vals[-k] * (1 - STILL_FALLING)


def _plateau_step(curves: Curves) -> int | None:
    """The step from which the train loss stayed flat (the second half moved less than PLATEAU), else None."""
    half = [p for p in curves.train[len(curves.train) // 2 :] if math.isfinite(p[1])]
    if len(half) < 4:
        return None
    first, last = _quarters([v for _, v in half])
    return half[0][0] if abs(first - last) <= PLATEAU * max(abs(first), 1e-12) else None


def _context(curves: Curves, n: dict[str, Any]) -> list[str]:
    """Evidence worth knowing whatever the verdict: the gap, a plateau, and what could not be judged."""
    lines = []
    if n.get("gap") is not None:
        lines.append(f"train-validation gap at the end: {n['gap']:+.4g} (val {n['val_loss_end']:.4g}, train "
                     f"{n['train_loss_end']:.4g})")  # fmt: skip
    plateau = _plateau_step(curves)
    if plateau is not None:
        lines.append(f"train loss flat (within {PLATEAU:.0%}) from step {plateau}")
    if not curves.val:
        lines.append("no validation loss was logged, so overfitting cannot be seen; give the run a validation split")
    if 0 < n["spikes"] < SPIKES_UNSTABLE:
        lines.append(f"{n['spikes']} isolated loss spike(s)")
    return lines


def _good_evidence(curves: Curves, n: dict[str, Any]) -> list[str]:
    if not curves.val:
        return [f"train loss fell {1 - n['train_loss_end'] / n['train_loss_start']:.0%} without spikes"]
    return [f"validation loss reached {n['best_val_loss']:.4g} at step {n['best_val_step']} and stayed within "
            f"{RISE:.0%} of it"]  # fmt: skip


def _good_advice(n: dict[str, Any]) -> list[str]:
    if n.get("best_val_step") is not None and n["best_val_step"] < n["last_step"]:
        return [f"the best validation loss came at step {n['best_val_step']} of {n['last_step']}: fewer steps "
                "would do as well (or training.early_stopping_patience)"]  # fmt: skip
    return ["keep these settings; compare runs by their validation metrics with intervals"]


def plot_curves(curves: Curves, path: Path, diagnosis: Diagnosis | None = None) -> Path:
    """Train and validation loss against the step (the best validation marked), learning rate on a second axis."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if curves.train:
        ax.plot(*zip(*curves.train, strict=True), label="train loss", color="#1f77b4", alpha=0.8)
    if curves.val:
        ax.plot(*zip(*curves.val, strict=True), "o-", label="validation loss", color="#d62728")
        best = min(curves.val, key=lambda p: p[1])
        ax.axvline(best[0], color="#d62728", linestyle=":", alpha=0.6, label=f"best validation (step {best[0]})")
    if curves.baseline_val is not None:
        ax.axhline(curves.baseline_val, color="grey", linestyle="--", alpha=0.6, label="validation before training")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if curves.lr:
        lr_ax = ax.twinx()
        lr_ax.plot(*zip(*curves.lr, strict=True), color="#2ca02c", alpha=0.35, label="learning rate")
        lr_ax.set_ylabel("learning rate", color="#2ca02c")
        ax.set_zorder(lr_ax.get_zorder() + 1)  # the losses and their legend in front of the rate
        ax.patch.set_visible(False)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_title(f"Learning curves — {diagnosis.verdict}" if diagnosis else "Learning curves")
    fig.tight_layout()
    fig.savefig(path)
    return path


def diagnose_run(run_dir: str | Path) -> Diagnosis:
    """Diagnose a run folder and write diagnosis.json and learning_curves.png into it."""
    run_dir = Path(run_dir)
    curves = read_curves(run_dir)
    result = diagnose(curves)
    write_text(run_dir / DIAGNOSIS_FILE, json.dumps(result.to_json(), indent=2))
    plot_curves(curves, run_dir / CURVES_FILE, result)
    return result
