"""What a run will cost before it trains (`tunelab plan`, `tunelab tune --dry-run`): rows, tokens, optimizer steps,
peak memory and time, the last two measured by a short probe of real steps.

The probe is the run itself cut short: the same data, model, method and objective (`setup_training`) trained by
the same loop (`fit`) for a few steps in a temporary folder, evaluation off. The first step is left out of the
rate (it pays for allocation and kernel selection); the time for the whole run is its training tokens over the
probe's tokens per second, so long and short batches weigh as they will. Evaluation and generation after
training are not included; nothing is kept.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console

from tunelab.config import TunelabConfig
from tunelab.core.errors import ConfigError
from tunelab.data.schedule import epoch_batches
from tunelab.recipes.run import setup_training
from tunelab.train.loop import fit

PROBE_STEPS = 4
"""Optimizer steps the probe trains (the first is not measured)."""


@dataclass(frozen=True)
class RunPlan:
    train_rows: int
    val_rows: int
    tokens_per_epoch: int
    """Tokens of the training items (unpadded), one pass."""
    epochs: float
    steps: int
    """Optimizer steps of the whole run."""
    tokens_per_s: float
    """Measured by the probe."""
    peak_mem_mb: float
    """Peak memory of the probe (process RSS on a CPU, allocated on CUDA)."""
    probe_steps: int

    @property
    def train_tokens(self) -> int:
        return int(self.tokens_per_epoch * self.epochs)

    @property
    def seconds(self) -> float:
        """Estimated training time: the run's tokens at the probe's rate."""
        return self.train_tokens / max(self.tokens_per_s, 1e-9)


def plan_run(cfg: TunelabConfig, *, probe_steps: int = PROBE_STEPS, console: Console | None = None) -> RunPlan:
    """Measure what `cfg` would cost as one run; trains `probe_steps` real steps in a temporary folder."""
    if cfg.stages or cfg.continual is not None:
        raise ConfigError("tunelab plan estimates one run; a config with stages: or continual: describes several.")
    console = console or Console(quiet=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    set_seed(cfg.training.seed)
    with tempfile.TemporaryDirectory(prefix="tunelab-plan-") as tmp:
        run_dir = Path(tmp)
        setup = setup_training(cfg, run_dir, accelerator, console)
        t = setup.training  # with the `auto` settings chosen, as the run will choose them
        train = setup.data.train
        lengths = [setup.objective.length(x) for x in train]
        batches = len(epoch_batches(lengths, t.batch_size, t.seed, 0, rank=accelerator.process_index,
                                    world_size=accelerator.num_processes, schedule=setup.data.schedule))  # fmt: skip
        per_epoch = math.ceil(batches / t.grad_accum)
        steps = t.max_steps or per_epoch * t.epochs
        short = {"max_steps": min(probe_steps, steps), "log_every": 1, "eval_every": None, "save_every": None}
        probe = t.model_copy(update={**short, "early_stopping_patience": None, "max_time": None})
        fit(setup.model, setup.objective, train, [], probe, run_dir, pad_id=setup.pad_id, accelerator=accelerator,
            bf16=setup.bf16, ctx=setup.ctx, schedule=setup.data.schedule, hooks=setup.hooks,
            head=setup.built.output_layer(), learning_rates=setup.built.learning_rates)  # fmt: skip
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps_lines = [line for line in lines if "tokens_per_s" in line]
    measured = steps_lines[1:] or steps_lines  # the first step pays for warming up
    rate = sum(line["tokens_per_s"] for line in measured) / max(len(measured), 1)
    peak = max((line.get("peak_mem_mb", 0.0) for line in steps_lines), default=0.0)
    epochs = steps / per_epoch
    return RunPlan(len(train), len(setup.data.val), sum(lengths), epochs, steps, rate, peak, len(steps_lines))


def print_plan(console: Console, plan: RunPlan, *, trials: int | None = None, epochs_factor: float = 1.0) -> None:
    """The plan as a few lines; with `trials`, a study's total (each trial `epochs_factor` times the base run)."""
    console.print(
        f"rows: {plan.train_rows:,} train / {plan.val_rows:,} validation; tokens: {plan.tokens_per_epoch:,} per "
        f"epoch, {plan.train_tokens:,} in {plan.epochs:g} epoch(s); optimizer steps: {plan.steps:,}",
        soft_wrap=True,
    )
    console.print(
        f"probe: {plan.probe_steps} steps at {plan.tokens_per_s:,.0f} tokens/s, peak memory {plan.peak_mem_mb:,.0f} "
        f"MB → estimated training time {duration_text(plan.seconds)} (evaluation not included)",
        soft_wrap=True,
    )
    if trials is not None:
        total = plan.seconds * epochs_factor * trials
        console.print(f"study: {trials} trials → at most {duration_text(total)} of training (pruned trials stop "
                      "sooner)", soft_wrap=True)  # fmt: skip


def duration_text(seconds: float) -> str:
    """`seconds` for a person: 42 s, 3 min 20 s, 2 h 05 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
