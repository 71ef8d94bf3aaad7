"""The training loop. One loop for every technique: they plug in as an objective, a method or a data schedule.

Read top to bottom: restore → for each optimizer step: gather micro-batches, count target tokens, forward and
backward each micro-batch with the loss normalised over the whole step, clip, step (or skip a non-finite step)
→ log / evaluate / save.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft.helpers import disable_input_dtype_casting
from torch import nn
from transformers import PreTrainedModel

from tunelab.core.device import autocast
from tunelab.core.errors import ConfigError, RunError
from tunelab.data.schedule import Schedule, epoch_batches
from tunelab.methods.schedule import on_step_
from tunelab.objectives.base import Objective
from tunelab.regularizers.adversarial import with_adversarial
from tunelab.regularizers.l1l2 import prepare_training_
from tunelab.regularizers.task_weighting import (
    log_var_metrics,
    log_var_state,
    restore_log_vars_,
    task_names,
    with_task_weighting,
)
from tunelab.train import zero
from tunelab.train.checkpoint import latest_checkpoint, load_checkpoint, load_weights_, save_checkpoint, save_weights
from tunelab.train.config import TrainingSection
from tunelab.train.distributed import (
    check_backend,
    fsdp_settings,
    meta_copy,
    name_layer_class_,
    refuse_unsharded_state,
    replicated,
    shard_,
    unsharded,
)
from tunelab.train.metrics import MetricsLog, peak_memory_mb
from tunelab.train.microbatch import Pieces, split_rows, token_budget
from tunelab.train.optim import build_optimizer, build_scheduler
from tunelab.train.progress import TrainProgress


class TrainingModule(nn.Module):
    """The model plus its objective, so that a distributed wrapper sees the whole loss computation as one
    forward (DDP synchronises gradients through hooks on the wrapped module's forward)."""

    def __init__(self, model: nn.Module, objective: Objective, ctx: Any = None) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.ctx = ctx
        """What the objective's setup built (a reference model, a teacher): held, not registered as a submodule,
        so it is neither trained nor synchronised by DDP."""

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = self.objective.loss(self.model, batch, self.ctx)
        correct = parts.correct if parts.correct is not None else torch.zeros((), device=parts.loss_sum.device)
        return parts.loss_sum, parts.count, correct


@dataclass
class FitResult:
    steps: int
    stopped_early: bool
    best_val_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None
    """The trained model, unsharded: the one given to `fit`, or after sharded training a copy of it holding the
    gathered weights (sharding changed the given one in place)."""


@torch.no_grad()
def validation_metrics(
    module: nn.Module,
    data: list[Any],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    pieces: Pieces | None = None,
) -> dict[str, float]:
    """Validation loss averaged as the objective counts (tokens, pairs), its accuracy (`val_token_acc`,
    `val_pair_acc`, ...) and, for language modelling, perplexity. With `pieces` (the training's) a batch of a
    row-sum objective runs in row pieces, as training does: the same sums, and no larger working set than a
    training step."""
    objective = getattr(module, "module", module).objective  # under DDP the TrainingModule is wrapped
    budget = pieces if objective.row_independent else None
    was_training = module.training
    module.eval()
    loss_sum = count = correct = 0.0
    order = sorted(range(len(data)), key=lambda i: objective.length(data[i]))
    for start in range(0, len(order), batch_size):
        batch = objective.collate([data[i] for i in order[start : start + batch_size]], pad_id)
        for piece in split_rows(batch, budget):
            with autocast(device, bf16):
                loss, n, right = module({k: v.to(device) for k, v in piece.items()})
            loss_sum, count, correct = loss_sum + float(loss), count + float(n), correct + float(right)
    module.train(was_training)
    mean = loss_sum / max(count, 1.0)
    metrics = {"val_loss": mean, f"val_{objective.metric}": correct / max(count, 1.0)}
    tasks = sorted({str(getattr(item, "task", "")) for item in data})
    for task in tasks if len(tasks) > 1 else []:  # multi-task data: each task's own numbers, e.g. val_loss/dates
        own = [item for item in data if str(getattr(item, "task", "")) == task]
        own_metrics = validation_metrics(module, own, batch_size, pad_id, device, bf16, pieces)
        metrics.update({f"{k}/{task}": v for k, v in own_metrics.items()})
    return {**metrics, "val_ppl": math.exp(min(mean, 50.0))} if objective.perplexity else metrics


def fit(
    model: nn.Module,
    objective: Objective,
    train: list[Any],
    val: list[Any],
    cfg: TrainingSection,
    run_dir: Path,
    *,
    pad_id: int,
    accelerator: Accelerator,
    bf16: bool,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    ctx: Any = None,
    schedule: Schedule | None = None,
) -> FitResult:
    """Train `model` in place on `train` (items of the objective's kind), evaluating on `val`; checkpoints and
    metrics go to `run_dir`. `ctx` is what the objective's setup built. Under FSDP `model` is sharded in place:
    use `FitResult.model` afterwards."""
    sharding = check_backend(accelerator)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    lengths = [objective.length(t) for t in train]
    batches_per_epoch = len(
        epoch_batches(lengths, cfg.batch_size, cfg.seed, 0, rank=rank, world_size=world, schedule=schedule)
    )
    if batches_per_epoch == 0:
        raise RunError(f"Nothing to train on: {len(train)} training items give no batch on process {rank} of {world}.")
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs

    if cfg.adversarial is not None:
        objective = with_adversarial(objective, cfg.adversarial)
    objective, task_params = with_task_weighting(objective, cfg, train, device)  # training.task_weights/_weighting
    # Sharded processes must run the same number of forwards (each gathers the weights): no uneven splitting.
    splits = objective.row_independent and sharding == "none"
    budget = token_budget(cfg.micro_batch_tokens, device) if splits else None
    task_tags = task_names(train) if task_params else []  # the learned s_t's tasks, logged and checkpointed by name
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing_(model)
    module = TrainingModule(model, objective, ctx)
    frame = None
    if sharding != "none":  # the gathered weights go back into this copy at the end
        refuse_unsharded_state(model, cfg)
        frame = meta_copy(model)
    if sharding == "fsdp-cpu":  # accelerate drops FSDP on CPU processes: shard here, before the optimizer is built
        shard_(module, fsdp_settings(), world)
    elif sharding == "fsdp-accelerate":
        name_layer_class_(accelerator, model)
    # Before any checkpoint is restored: the ΔW penalties measure change from the weights the method set up.
    regularizer = prepare_training_(model, cfg)
    optimizer = build_optimizer(model, cfg)
    if task_params:  # the learned task uncertainties train with the model
        optimizer.add_param_group({"params": task_params, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if sharding == "deepspeed":  # tunelab builds the engine: accelerate would drop DeepSpeed on CPU processes
        if task_params:
            raise ConfigError(_NOT_UNDER_DEEPSPEED)
        module = zero.build_engine(module, optimizer, zero.engine_config(zero.launch_config(accelerator), cfg, world))
    elif sharding == "fsdp-cpu":  # already sharded; accelerate would wrap it in DDP
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    steps = (
        zero.EngineSteps(module)
        if sharding == "deepspeed"
        else AccelerateSteps(accelerator, module, optimizer, cfg.max_grad_norm)
    )

    ckpt_dir = run_dir / "checkpoints"
    state: dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "best_val": None, "bad_evals": 0}
    if resume and (latest := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(latest, module, optimizer, scheduler)
        restore_log_vars_(task_params, task_tags, state)
    state.setdefault("skipped_steps", 0)
    bad_in_a_row = 0
    # A resumed run drops the metric lines written after its checkpoint, so the file ends as if never killed.
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process, keep=state.get("metric_lines", 0))
    step, epoch, stopped_early = state["step"], state["epoch"], False

    def evaluate_and_maybe_stop() -> bool:
        metrics = validation_metrics(module, val, cfg.batch_size, pad_id, device, bf16, budget)
        log.write({"step": step, "epoch": epoch, **metrics})
        accuracy = f"val_{objective.metric}"
        progress.note(f"step {step}: val_loss {metrics['val_loss']:.4f}  {accuracy} {metrics[accuracy]:.1%}")
        best = state["best_val"]
        if best is None or metrics["val_loss"] < best - cfg.early_stopping_min_delta:
            state["best_val"], state["bad_evals"] = metrics["val_loss"], 0
            if cfg.early_stopping_patience:
                save_weights(ckpt_dir / "best.safetensors", module, main=accelerator.is_main_process)
            return False
        state["bad_evals"] += 1
        return bool(cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience)

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_dir, step, module, optimizer, scheduler,
            {**state, "step": step, "epoch": epoch, "metric_lines": len(log.lines),
             **log_var_state(task_params, task_tags)}, cfg.keep_checkpoints, main=accelerator.is_main_process,
        )  # fmt: skip
        accelerator.wait_for_everyone()

    module.train()
    progress = TrainProgress(total_steps, start=step, enabled=accelerator.is_main_process)
    window_tokens, window_start = 0, time.perf_counter()
    train_start = window_start
    # peft casts each adapter's input to the adapter's fp32 dtype; under autocast the matmul casts it straight
    # back to bf16, so the cast is two wasted copies of the activations per adapted layer.
    no_cast = disable_input_dtype_casting(model) if bf16 else contextlib.nullcontext()
    with progress, no_cast:
        while step < total_steps and not stopped_early:
            batches = epoch_batches(
                lengths, cfg.batch_size, cfg.seed, epoch, rank=rank, world_size=world, schedule=schedule
            )
            for start in range(state["micro"], len(batches), cfg.grad_accum):
                on_step_(model, step, epoch)  # gradual unfreezing thaws layers on its schedule
                micro_batches = batches[start : start + cfg.grad_accum]
                group = [
                    piece  # a micro-batch over the token budget runs as row pieces: the same gradient, less memory
                    for b in micro_batches
                    for piece in split_rows(objective.collate([train[i] for i in b], pad_id), budget)
                ]
                # Normalise by the targets (tokens, pairs) of the whole step on every process, so that accumulation
                # and data parallelism give the same gradient as one big batch (DDP averages over processes).
                step_tokens = sum(objective.count(g) for g in group)
                total_tokens = accelerator.reduce(torch.tensor(step_tokens, device=device), "sum").item()
                step_loss = torch.zeros((), device=device)
                for k, batch in enumerate(group):
                    with steps.micro_batch(last=k == len(group) - 1), autocast(device, bf16):
                        loss_sum, _, _ = module({key: v.to(device) for key, v in batch.items()})
                        # The penalty is per step, so each of the step's micro-batches carries its share.
                        loss = loss_sum * world / max(total_tokens, 1) + regularizer.penalty() / len(group)
                    steps.backward(loss)
                    step_loss += loss_sum.detach()
                    # Every input's mask counts: pair objectives (contrastive) hold one per role.
                    window_tokens += sum(int(v.sum()) for key, v in batch.items() if key.endswith("attention_mask"))
                lr = scheduler.get_last_lr()[0]
                # A NaN/inf step is skipped, not written into the weights; it still counts towards max_steps.
                grad_norm, good = steps.step(step_loss)
                if good:
                    bad_in_a_row = 0
                else:
                    state["skipped_steps"] += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= cfg.max_bad_steps:
                        raise RunError(_bad_steps_message(step + 1, bad_in_a_row, state["skipped_steps"]))
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                state["micro"], state["step"] = start + cfg.grad_accum, step

                if step % cfg.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    mean_loss = accelerator.reduce(step_loss, "sum").item() / max(total_tokens, 1)
                    tokens_per_s = window_tokens * world / max(elapsed, 1e-9)
                    log.write(
                        {"step": step, "epoch": epoch, "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                         "skipped_steps": state["skipped_steps"], "tokens_per_s": tokens_per_s,
                         "peak_mem_mb": peak_memory_mb(device), "elapsed_s": time.perf_counter() - train_start,
                         **log_var_metrics(task_params, task_tags)}
                    )  # fmt: skip
                    progress.update(step, loss=mean_loss, tokens_per_s=tokens_per_s)
                    window_tokens, window_start = 0, time.perf_counter()
                else:
                    progress.update(step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps and val:
                    stopped_early = evaluate_and_maybe_stop()
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    checkpoint()
                if on_step is not None:
                    on_step(step)
                if step >= total_steps or stopped_early:
                    break
            else:
                epoch, state["micro"] = epoch + 1, 0
                state["epoch"] = epoch
                if val and step < total_steps and not (cfg.eval_every and step % cfg.eval_every == 0):
                    stopped_early = evaluate_and_maybe_stop()
        if val:
            final = validation_metrics(module, val, cfg.batch_size, pad_id, device, bf16, budget)
            log.write({"step": step, "epoch": epoch, "final": True, **final})
        checkpoint()

    if stopped_early and (ckpt_dir / "best.safetensors").is_file():
        load_weights_(ckpt_dir / "best.safetensors", module)
    trained = unsharded(module, frame) if frame is not None else model
    return FitResult(step, stopped_early, state["best_val"], log.lines, trained)


@dataclass
class AccelerateSteps:
    """How a step's micro-batches go backward and the step is taken through accelerate (one process, DDP, FSDP):
    gradients synchronised on the last micro-batch only, clipped, and the update skipped when the loss or the
    norm is not finite on some process. `zero.EngineSteps` does the same through DeepSpeed's engine."""

    accelerator: Accelerator
    module: nn.Module
    optimizer: torch.optim.Optimizer
    max_grad_norm: float | None

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.module)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, step_loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Clip and update; the gradient norm before clipping and whether the update was made."""
        grad_norm = replicated(  # a norm over sharded gradients is a DTensor
            self.accelerator.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
            if self.max_grad_norm
            else _grad_norm(self.module)
        )
        # The processes must agree, or their weights would drift apart. One flag read per step (the token count
        # already syncs once per step).
        bad = ~torch.isfinite(step_loss) | ~torch.isfinite(grad_norm.to(step_loss.device, torch.float32))
        good = self.accelerator.reduce(bad.float(), "sum").item() == 0
        if good:
            self.optimizer.step()
        return grad_norm, good


_NOT_UNDER_DEEPSPEED = (
    "training.task_weighting: uncertainty learns its task weights outside the model, where DeepSpeed's engine "
    "does not reach them. Use fixed training.task_weights under DeepSpeed, or launch with "
    "examples/accelerate/fsdp.yaml or ddp.yaml."
)


def _bad_steps_message(step: int, in_a_row: int, skipped: int) -> str:
    return (
        f"Training stopped at step {step}: the last {in_a_row} steps had a NaN or infinite loss or gradient norm "
        f"and were skipped ({skipped} skipped in all). The weights are those of the last good step. Try a lower "
        "training.learning_rate, training.precision=fp32, gradient clipping (training.max_grad_norm=1.0), or look "
        "for broken rows in the data; training.max_bad_steps sets how many bad steps in a row are tolerated."
    )


def enable_gradient_checkpointing_(model: nn.Module) -> None:
    """Turn on activation checkpointing in the transformers model inside `model` (itself, under a peft wrapper or
    under an objective's head), non-reentrant: it needs no input that requires grad and works with frozen bases."""
    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None or not hf.supports_gradient_checkpointing:
        name = type(hf or model).__name__
        raise ConfigError(
            f"training.gradient_checkpointing: the model ({name}) does not support activation checkpointing. "
            "Set training.gradient_checkpointing=false, or lower training.batch_size to save memory instead."
        )
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # the newer name; gradient_checkpointing_enable is deprecated
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # Models whose own code checkpoints reentrantly need an input that requires grad, which frozen embeddings
    # (adapters, frozen layers) never give; the hook makes the embeddings' output require it.
    frozen = not any(p.requires_grad for p in hf.get_input_embeddings().parameters())
    if frozen and not hasattr(hf, "_require_grads_hook"):
        hf.enable_input_require_grads()


def _grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All lines of a run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
