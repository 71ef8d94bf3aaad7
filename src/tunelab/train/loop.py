"""The training loop. One loop for every technique: they plug in as an objective, a method (its step hooks), a
regularizer (a loss wrapper or a penalty, `train.techniques`) or a data schedule.

Read top to bottom: set up (techniques, sharding, optimizer, restore) → for each optimizer step: step hooks,
gather micro-batches, `train_step` (forward and backward each piece with the loss normalised over the whole step,
clip, update or skip a non-finite step) → log / evaluate / save.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft.helpers import disable_input_dtype_casting
from torch import nn
from transformers import PreTrainedModel

from tunelab.core.errors import ConfigError, RunError
from tunelab.data.schedule import Schedule, epoch_batches
from tunelab.methods.base import StepHook
from tunelab.objectives.base import Objective
from tunelab.train import zero
from tunelab.train.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_weights_,
    save_checkpoint,
    save_weights,
    sweep,
)
from tunelab.train.config import TrainingSection
from tunelab.train.distributed import (
    check_backend,
    fsdp_settings,
    meta_copy,
    name_layer_class_,
    refuse_unsharded_state,
    shard_,
    summed,
    unsharded,
)
from tunelab.train.hooks import MetricsHook, ValidationHook
from tunelab.train.metrics import MetricsLog, peak_memory_mb
from tunelab.train.microbatch import split_rows, token_budget
from tunelab.train.module import TrainingModule
from tunelab.train.optim import Trainable, build_optimizer, build_scheduler, optimizer_parameters
from tunelab.train.progress import TrainProgress
from tunelab.train.step import AccelerateSteps, train_step
from tunelab.train.stop import stop_on_sigterm
from tunelab.train.techniques import build_techniques
from tunelab.train.validation import validation_metrics


@dataclass
class FitResult:
    steps: int
    stopped_early: bool
    best_val_loss: float | None
    model: nn.Module
    """The trained model, unsharded: the one given to `fit`, or after sharded training a copy of it holding the
    gathered weights (sharding changed the given one in place)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False
    """Stopped because `training.max_time` was spent (a resume trains on)."""
    stopped_by: str = ""
    """The signal (SIGTERM) that stopped the run at a step boundary, result and checkpoint saved; "" if none."""


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
    resume: bool | Path = False,
    ctx: Any = None,
    schedule: Schedule | None = None,
    hooks: Sequence[StepHook] = (),
    head: nn.Module | None = None,
    learning_rates: Mapping[str, float] | None = None,
    identity: dict[str, Any] | None = None,
    save_result: Callable[[nn.Module], None] | None = None,
    on_validation: ValidationHook | None = None,
    on_metrics: MetricsHook | None = None,
) -> FitResult:
    """Train `model` in place on `train` (items of the objective's kind), evaluating on `val`; checkpoints and
    metrics go to `run_dir`. `ctx`, `head` and `learning_rates` are what the objective's setup built (`Setup`);
    `hooks` run around every step (the method's, e.g. gradual unfreezing). Under FSDP `model` is sharded in place:
    use `FitResult.model` afterwards.

    `resume`: True continues from the newest checkpoint that reads back whole, a path from that checkpoint.
    `identity` (the run's config and data fingerprint) is stored in every checkpoint. `save_result` is called on
    the main process with the trained (unsharded) model before the final checkpoint is written, so a full disk
    at the end loses the checkpoint rather than the result. `on_validation` receives each evaluation during training
    and may end the run by raising `hooks.StopTraining`; `on_metrics` each metrics line as it is written."""
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

    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing_(model)
    dormant = [p for hook in hooks for p in hook.dormant_parameters()]
    # Before any checkpoint is restored: the ΔW penalties measure change from the weights the method set up.
    trainable = [p for _, p in optimizer_parameters(model, dormant)]
    techniques = build_techniques(model, cfg, train, head=head, trainable=trainable)
    objective = techniques.wrap(objective)
    # Sharded processes must run the same number of forwards (each gathers the weights): no uneven splitting.
    splits = objective.row_independent and sharding == "none"
    budget = token_budget(cfg.micro_batch_tokens, device) if splits else None
    module = TrainingModule(model, objective, ctx, techniques.trained)
    frame = None
    if sharding != "none":  # the gathered weights go back into this copy at the end
        refuse_unsharded_state(cfg, hooks)
        frame = meta_copy(model)
    if sharding == "fsdp-cpu":  # accelerate drops FSDP on CPU processes: shard here, before the optimizer is built
        shard_(module, fsdp_settings(), world)
    elif sharding == "fsdp-accelerate":
        name_layer_class_(accelerator, model)
    beside = list(module.techniques.parameters())  # the learned task uncertainties train with the model
    extra = Trainable(head=head, learning_rates=learning_rates or {}, dormant=dormant, beside=beside)
    optimizer = build_optimizer(model, cfg, extra)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if sharding == "deepspeed":  # tunelab builds the engine: accelerate would drop DeepSpeed on CPU processes
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
    penalty = techniques.penalty if techniques.penalties else None

    ckpt_dir = run_dir / "checkpoints"
    main = accelerator.is_main_process
    if main:
        sweep(ckpt_dir)  # what a save that was killed or ran out of space left
    state: dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "best_val": None, "bad_evals": 0}
    start_from = resume if isinstance(resume, Path) else None
    if resume is True:
        start_from, warnings = find_checkpoint(ckpt_dir)
        for line in warnings if main else []:
            print(line, file=sys.stderr)
    if start_from is not None:
        state = load_checkpoint(start_from, module, optimizer, scheduler)
        techniques.restore(state)
    state.setdefault("skipped_steps", 0)
    finished = bool(state.pop("finished", False))  # resumed from the final checkpoint: nothing left to train
    bad_in_a_row = 0
    # A resumed run drops the metric lines written after its checkpoint, so the file ends as if never killed.
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main, keep=state.get("metric_lines", 0),
                     on_write=on_metrics)  # fmt: skip
    step, epoch, stopped_early = state["step"], state["epoch"], bool(state.get("stopped_early", False))
    start_step = step

    def evaluate_and_maybe_stop() -> bool:
        metrics = validation_metrics(module, val, cfg.batch_size, pad_id, device, bf16, budget)
        log.write({"step": step, "epoch": epoch, **metrics})
        if on_validation is not None:
            on_validation(step, metrics)
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

    def checkpoint(last: bool = False) -> None:
        log.sync()  # the lines a resume keeps are on the disk before the checkpoint that counts them
        loop_state = {**state, "step": step, "epoch": epoch, "stopped_early": stopped_early, "finished": last,
                      "metric_lines": len(log.lines), **techniques.state()}  # fmt: skip
        save_checkpoint(ckpt_dir, step, module, optimizer, scheduler, loop_state, cfg.keep_checkpoints, main=main,
                        identity=identity)  # fmt: skip
        accelerator.wait_for_everyone()

    module.train()
    progress = TrainProgress(total_steps, start=step, enabled=accelerator.is_main_process)
    window_tokens, window_start = 0, time.perf_counter()
    train_start = window_start
    # peft casts each adapter's input to the adapter's fp32 dtype; under autocast the matmul casts it straight
    # back to bf16, so the cast is two wasted copies of the activations per adapted layer.
    no_cast = disable_input_dtype_casting(model) if bf16 else contextlib.nullcontext()
    timed_out = signalled = False
    with progress, no_cast, stop_on_sigterm() as stop:
        while step < total_steps and not stopped_early and not timed_out:
            batches = epoch_batches(
                lengths, cfg.batch_size, cfg.seed, epoch, rank=rank, world_size=world, schedule=schedule
            )
            for start in range(state["micro"], len(batches), cfg.grad_accum):
                for hook in hooks:
                    hook.on_step_start(step, epoch)
                group = [
                    piece  # a micro-batch over the token budget runs as row pieces: the same gradient, less memory
                    for b in batches[start : start + cfg.grad_accum]
                    for piece in split_rows(objective.collate([train[i] for i in b], pad_id), budget)
                ]
                lr = scheduler.get_last_lr()[0]
                done = train_step(module, objective, group, steps, device=device, bf16=bf16, accelerator=accelerator,
                                  penalty=penalty)  # fmt: skip
                window_tokens += done.tokens
                # A NaN/inf step is skipped, not written into the weights; it still counts towards max_steps.
                if done.good:
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
                    mean_loss = summed(accelerator, done.loss_sum).item() / max(done.targets, 1)
                    tokens_per_s = window_tokens * world / max(elapsed, 1e-9)
                    log.write(
                        {"step": step, "epoch": epoch, "loss": mean_loss, "lr": lr, "grad_norm": float(done.grad_norm),
                         "skipped_steps": state["skipped_steps"], "tokens_per_s": tokens_per_s,
                         "peak_mem_mb": peak_memory_mb(device), "elapsed_s": time.perf_counter() - train_start,
                         **techniques.metrics()}
                    )  # fmt: skip
                    progress.update(step, loss=mean_loss, tokens_per_s=tokens_per_s)
                    window_tokens, window_start = 0, time.perf_counter()
                else:
                    progress.update(step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps and val:
                    stopped_early = evaluate_and_maybe_stop()
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    checkpoint()
                for hook in hooks:
                    hook.on_step_end(step)
                # The budget is this process's training time, so a resumed run gets a fresh one. Every process
                # stops at the same step: the first one out of time decides.
                # A stop request (SIGTERM) is agreed on the same way, so it costs one tiny all-reduce a step.
                if (cfg.max_time is not None or stop.requested or world > 1) and step < total_steps:
                    spent = cfg.max_time is not None and time.perf_counter() - train_start >= cfg.max_time
                    flags = torch.tensor([float(spent), float(stop.requested)], device=device)
                    flags = summed(accelerator, flags) if world > 1 else flags
                    timed_out, signalled = bool(flags.sum().item() > 0), bool(flags[1].item() > 0)
                if timed_out:
                    why = (
                        f"{stop.signal_name or 'SIGTERM'} received"
                        if signalled
                        else f"training.max_time ({cfg.max_time} s) spent"
                    )
                    progress.note(f"{why} at step {step} of {total_steps}: stopping; --resume trains on")
                if step >= total_steps or stopped_early or timed_out:
                    break
            else:
                epoch, state["micro"] = epoch + 1, 0
                state["epoch"] = epoch
                if val and step < total_steps and not (cfg.eval_every and step % cfg.eval_every == 0):
                    stopped_early = evaluate_and_maybe_stop()
        stopped_by = (stop.signal_name or "SIGTERM") if signalled else ""
        if val and not stopped_by and not (finished and step == start_step):  # its line is among those kept
            final = validation_metrics(module, val, cfg.batch_size, pad_id, device, bf16, budget)
            log.write({"step": step, "epoch": epoch, "final": True, **final})

    if stopped_early and (ckpt_dir / "best.safetensors").is_file():
        load_weights_(ckpt_dir / "best.safetensors", module)
    trained = unsharded(module, frame) if frame is not None else model
    if save_result is not None and main:
        save_result(trained)
    checkpoint(last=True)  # after the result: with the result saved, losing this one loses nothing
    return FitResult(
        step, stopped_early, state["best_val"], trained, log.lines, timed_out and not stopped_by, stopped_by
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
