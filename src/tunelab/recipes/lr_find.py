"""Learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks"; the form
popularised by fastai): train a few steps while the learning rate grows exponentially from `start` to `end`,
smooth the loss, stop once it diverges, and suggest the rate where the smoothed loss falls fastest.

It measures, it does not train: the trainable weights are restored afterwards and no model is saved. It runs its
own short loop rather than `fit`, because the learning rate is set per step and the run is cut off on divergence;
each step is `fit`'s own (`train_step`: micro-batches accumulated with the loss normalised over the step's
targets, clipping, a non-finite step skipped) on the objective's own loss, without the run's regularizers and
method schedules (gradual unfreezing).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.table import Table
from torch import nn

from tunelab.config import TunelabConfig, dump_config
from tunelab.core.errors import ConfigError, RunError
from tunelab.data.schedule import epoch_batches
from tunelab.methods.trained import CONFIG_FILE
from tunelab.objectives.base import Objective
from tunelab.recipes.run import setup_training
from tunelab.recipes.runs import run_folder
from tunelab.train.config import TrainingSection
from tunelab.train.module import TrainingModule
from tunelab.train.optim import Trainable, build_optimizer
from tunelab.train.progress import TrainProgress
from tunelab.train.step import AccelerateSteps, train_step

SMOOTHING = 0.98
"""Weight of the running average in the smoothed loss (bias-corrected, as in fastai)."""
DIVERGE = 4.0
"""The test stops once the smoothed loss exceeds this many times its lowest value."""


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    """The rate at the steepest descent of the smoothed loss (`method` says if it had to fall back)."""
    method: str
    """`steepest`, or `min/10` (a tenth of the rate at the lowest smoothed loss) when too few steps ran."""
    min_loss_lr: float
    diverged: bool
    """Whether the test stopped early: the smoothed loss rose above DIVERGE x its best, or turned NaN/inf."""


def lr_schedule(start: float, end: float, steps: int) -> list[float]:
    """`steps` rates from `start` to `end`, evenly spaced in log scale."""
    return [start * (end / start) ** (i / max(steps - 1, 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction (the early values are not pulled towards zero)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str]:
    """The rate where the smoothed loss falls fastest per unit of log(lr), looked for between the first tenth of
    the curve (still settling) and its minimum; a tenth of the minimum's rate when that leaves under 3 points."""
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    first = len(smoothed) // 10
    if low - first < 2:
        return lrs[low] / 10, "min/10"
    logs = [math.log(x) for x in lrs]
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(first + 1, low)]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[first + 1 + best], "steepest"


def lr_find(
    model: nn.Module,
    objective: Objective,
    train: list[Any],
    cfg: TrainingSection,
    *,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    ctx: Any = None,
    extra: Trainable | None = None,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
    diverge: float = DIVERGE,
) -> LRFindResult:
    """Run the range test on `model` (its trainable weights are put back afterwards) with the optimizer, batch
    size and accumulation of `cfg`. Every parameter group keeps its ratio to the base rate (layer-wise decay,
    head and embedding rates, LoRA+); `extra` is what the objective's setup adds (its head, own rates)."""
    if not 0 < start < end or steps < 2:
        raise ConfigError(
            f"lr-find needs 0 < --start < --end and --steps of at least 2 (got start={start}, end={end}, "
            f"steps={steps}). Example: --start 1e-7 --end 1 --steps 100."
        )
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = build_optimizer(model, cfg, extra)
    ratios = [group["lr"] / cfg.learning_rate for group in optimizer.param_groups]
    lengths = [objective.length(t) for t in train]
    batches = cycle(epoch_batches(lengths, cfg.batch_size, cfg.seed, 0, group_by_length=cfg.group_by_length))
    module = TrainingModule(model, objective, ctx)
    backend = AccelerateSteps(Accelerator(cpu=device.type == "cpu"), module, optimizer, cfg.max_grad_norm)
    was_training = module.training
    module.train()
    lrs: list[float] = []
    losses: list[float] = []
    diverged = False
    try:
        with TrainProgress(steps) as progress:
            for lr in lr_schedule(start, end, steps):
                for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                    group["lr"] = lr * ratio
                group = [objective.collate([train[i] for i in next(batches)], pad_id) for _ in range(cfg.grad_accum)]
                done = train_step(module, objective, group, backend, device=device, bf16=bf16)
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(done.loss_sum) / max(done.targets, 1))
                lrs.append(lr)
                progress.update(len(losses), loss=losses[-1])
                smoothed = smooth(losses)
                if not math.isfinite(smoothed[-1]) or smoothed[-1] > diverge * min(smoothed):
                    diverged = True
                    break
    finally:
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(saved[name])
        model.zero_grad(set_to_none=True)
        module.train(was_training)
    finite = [i for i, v in enumerate(smooth(losses)) if math.isfinite(v)]
    if not finite:
        raise RunError(
            f"lr-find: the loss was NaN/inf from the first step (lr {start:g}). Check the data and the model, or "
            "try training.precision=fp32."
        )
    lrs, losses = [lrs[i] for i in finite], [losses[i] for i in finite]
    smoothed = smooth(losses)
    suggestion, method = suggest(lrs, smoothed)
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    return LRFindResult(lrs, losses, smoothed, suggestion, method, lrs[low], diverged)


def run_lr_find(
    cfg: TunelabConfig,
    *,
    config_path: Path | None = None,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
    console: Console | None = None,
) -> tuple[LRFindResult, Path]:
    """The range test on the model, method, objective and data a config trains: writes lr_find.json and
    lr_find.png to its own run folder, `<output.name>-lr-find` (replaced on every run, so that it never stands in
    the way of the training run), prints the curve and the suggestion. One process only."""

    console = console or Console()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.num_processes > 1:
        raise RunError("lr-find runs in one process: start it as `tunelab lr-find`, not under a distributed launcher.")
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    name = f"{cfg.output.name or (config_path.stem if config_path else 'run')}-lr-find"
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": name, "overwrite": True})})
    run_dir = run_folder(cfg, config_path, resume=False)
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
    set_seed(cfg.training.seed)
    setup = setup_training(cfg, run_dir, accelerator, console)
    extra = Trainable(head=setup.built.output_layer(), learning_rates=setup.built.learning_rates)
    result = lr_find(
        setup.model, setup.objective, setup.data.train, setup.training, pad_id=setup.pad_id,  # auto sizes chosen
        device=setup.device, bf16=setup.bf16, ctx=setup.ctx, extra=extra, start=start, end=end, steps=steps,
    )  # fmt: skip
    (run_dir / "lr_find.json").write_text(json.dumps(asdict(result), indent=2))
    plot(result, run_dir / "lr_find.png")
    _print(console, result, run_dir)
    return result, run_dir


def plot(result: LRFindResult, path: Path) -> None:
    """Smoothed loss against learning rate (log scale), the raw loss faint behind it, the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggestion {result.suggestion:.2e}")
    ax.set_xscale("log")
    # Raw spikes at the end would flatten the curve: the axis follows the smoothed loss.
    low, high = min(result.smoothed), max(result.smoothed)
    ax.set_ylim(min(low, min(result.losses)) - 0.05 * (high - low), high + 0.1 * (high - low))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print(console: Console, result: LRFindResult, run_dir: Path) -> None:
    table = Table(title="Learning-rate range test")
    for column in ("learning rate", "loss", "smoothed"):
        table.add_column(column, justify="right")
    every = max(1, len(result.lrs) // 12)
    for i in range(0, len(result.lrs), every):
        table.add_row(f"{result.lrs[i]:.2e}", f"{result.losses[i]:.4f}", f"{result.smoothed[i]:.4f}")
    console.print(table)
    how = "steepest descent of the smoothed loss" if result.method == "steepest" else "a tenth of the lowest loss's"
    stop = "stopped when the loss diverged" if result.diverged else "ran every step without diverging"
    console.print(
        f"suggested learning rate: [bold]{result.suggestion:.2e}[/] ({how}); lowest loss at {result.min_loss_lr:.2e}; "
        f"{len(result.lrs)} steps, {stop}. Set it with --set training.learning_rate={result.suggestion:.2e}"
    )
    console.print(f"plot and numbers: {run_dir / 'lr_find.png'}, {run_dir / 'lr_find.json'}")
