"""A whole run, top to bottom: setup → baseline evaluation → fit → save → final evaluation → report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.text import Text
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.config import TunelabConfig, dump_config
from tunelab.core.device import use_bf16
from tunelab.core.errors import ConfigError, DataError, RunStopped
from tunelab.core.files import replacing_dir, sweep_temporaries, write_text
from tunelab.data.pipeline import PreparedData
from tunelab.data.scoring import DifficultyScoring, apply_loss_difficulty
from tunelab.eval.classify import classifier_metrics, classifier_rows
from tunelab.eval.compare import summarize
from tunelab.eval.config import EvalSection
from tunelab.eval.diagnose import DIAGNOSIS_FILE, diagnose_run
from tunelab.eval.evaluate import generation_metrics, read_predictions, write_predictions
from tunelab.eval.report import run_report
from tunelab.eval.structured import load_schema
from tunelab.eval.table import comparison_table
from tunelab.methods.base import Method, StepHook, trainable_parameters
from tunelab.methods.registry import METHODS
from tunelab.methods.trained import CONFIG_FILE, artifact_dir
from tunelab.models.families import check_rows_fit
from tunelab.models.kernels.fast_path import apply_fast_path_
from tunelab.models.kernels.lora import use_fast_lora_
from tunelab.models.load import load_model, load_tokenizer, pad_id, resolve_source
from tunelab.models.rope import scale_rope_
from tunelab.objectives.base import Objective, PrepareArgs, Setup, SetupArgs
from tunelab.objectives.registry import OBJECTIVES
from tunelab.recipes.resume import check_resume, run_identity, saved_batch_size
from tunelab.recipes.runs import replacing, run_folder, run_path
from tunelab.recipes.track import RunTracker, tracking
from tunelab.train.auto import RunStats, adopt_saved, resolve_auto
from tunelab.train.batch_size import resolve_batch_size
from tunelab.train.checkpoint import find_checkpoint, read_identity
from tunelab.train.config import TrainingSection
from tunelab.train.hooks import ValidationHook
from tunelab.train.loop import fit
from tunelab.train.microbatch import token_budget
from tunelab.train.module import TrainingModule
from tunelab.train.validation import validation_metrics
from tunelab.train.zero import require_deepspeed


@dataclass
class RunResult:
    run_dir: Path
    baseline: dict[str, float] | None
    final: dict[str, float]
    model: nn.Module
    """The trained model in memory (adapter still attached), in eval mode."""
    body: nn.Module
    """The language model inside `model` (`objective.body`), the part `method.save` saved: without the objective's
    parts around it (PPO's value head, a classifier's head, a distillation teacher, a RAG retriever); the module to
    generate with. For a plain causal LM the same module as `model`."""


@dataclass
class TrainingSetup:
    """What a run trains and how, built once by `setup_training` (shared by `run_training` and `lr_find`)."""

    tokenizer: PreTrainedTokenizerBase
    objective: Objective[Any, Any]
    data: PreparedData
    """The data to train on (as the objective's setup left it)."""
    built: Setup[Any]
    """What the objective's setup built: the module to train (on the device, the method applied), the loss's ctx,
    the output layer and own learning rates."""
    hooks: list[StepHook]
    """What the method changes as training goes (gradual unfreezing)."""
    method: Method
    device: torch.device
    bf16: bool
    training: TrainingSection
    """The run's `training:` section with its `auto` settings chosen for this data and model."""
    auto_reasons: dict[str, str]
    """Each chosen setting with the rule that chose it ("learning_rate 0.001 (auto: lora, batch 16)")."""

    @property
    def model(self) -> nn.Module:
        return self.built.module

    @property
    def ctx(self) -> Any:
        return self.built.ctx

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad token id, which batches are padded with."""
        return pad_id(self.tokenizer)


def prepare_args(
    cfg: TunelabConfig,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    device: torch.device | None = None,
    bf16: bool = False,
) -> PrepareArgs[Any]:
    """What the run's objective prepares its data from: its section, the data section, the seed and batch size."""
    t = cfg.training
    return PrepareArgs(cfg.objective, cfg.data, tokenizer, run_dir, t.seed, t.batch_size, device or torch.device("cpu"),
                       bf16)  # fmt: skip


def difficulty_scoring(cfg: TunelabConfig) -> DifficultyScoring:
    """What the loss curriculum reads of the run config."""
    return DifficultyScoring(cfg.data.schedule, cfg.model.source, cfg.model.dtype, cfg.objective.name,
                             cfg.eval.batch_size)  # fmt: skip


def setup_training(cfg: TunelabConfig, run_dir: Path, accelerator: Accelerator, console: Console) -> TrainingSetup:
    """Data, model, method and objective as the config says; what is written goes to `run_dir`."""
    main = accelerator.is_main_process
    source = resolve_source(cfg.model.source)
    tokenizer = load_tokenizer(source)
    objective = OBJECTIVES[cfg.objective.name]
    device = accelerator.device
    bf16 = use_bf16(cfg.training.precision, device)
    data = objective.prepare(prepare_args(cfg, tokenizer, run_dir, device, bf16))
    _print_data(console, data, main)
    if not data.train:
        raise DataError(
            f"No training examples are left for objective {cfg.objective.name!r}: every row of {cfg.data.train} was "
            f"rejected, removed or filtered (see {run_dir / 'data_report.md'} and the rejects file there). Fix the "
            "rows or the data settings that removed them."
        )
    method = METHODS[cfg.method.name]
    storage_bf16 = cfg.model.dtype == "bf16" or (cfg.model.dtype == "auto" and bf16 and method.freezes_base)
    model = load_model(source, dtype=torch.bfloat16 if storage_bf16 else torch.float32)
    model = scale_rope_(model, cfg.model.rope_scaling).to(device)
    # A curriculum by the base model's per-example loss is scored here, before the method changes the model.
    data = apply_loss_difficulty(model, data, difficulty_scoring(cfg), run_dir, pad_id(tokenizer), bf16)
    if not cfg.data.packing:  # packed rows restart their positions per example
        lengths = [objective.length(x) for x in data.train]
        check_rows_fit(getattr(model, "config", None), lengths, cfg.data.max_length)
    fast_path = apply_fast_path_(model, cfg.training.fused_modules)  # before the method wraps the linear layers
    model = method.apply_(model, cfg.method)
    fast_lora = use_fast_lora_(model) if cfg.training.fused_modules is not False else (0, 0)
    hooks = method.step_hooks(model, cfg.method)
    # A reference model, a teacher, or a head around the model.
    args = SetupArgs(
        model,
        tokenizer,
        device,
        bf16,
        run_dir,
        data,
        cfg.method.name,
        cfg.training.label_smoothing,
        cfg.training.loss_chunk_tokens,
    )
    built = objective.setup(cfg.objective, args)
    data = built.data if built.data is not None else data
    trainable, total = trainable_parameters(built.module)
    if main:
        console.print(
            f"[bold]{cfg.method.name}[/]: {trainable:,} trainable of {total:,} parameters "
            f"({trainable / total:.2%}); compute {'bf16 autocast' if bf16 else 'fp32'} on {device.type}; "
            f"{fast_path.describe()}"
            + (f"; fast LoRA on {fast_lora[0]} layers, {fast_lora[1]} sibling groups" if fast_lora[0] else "")
        )
    stats = run_stats(cfg, data, objective, trainable, total, accelerator.num_processes)
    resolved = resolve_auto(cfg.training, stats)
    if main:
        for reason in resolved.reasons.values():
            console.print(reason)
    return TrainingSetup(tokenizer, objective, data, built, hooks, method, device, bf16, resolved.training,
                         resolved.reasons)  # fmt: skip


def run_stats(
    cfg: TunelabConfig, data: PreparedData, objective: Objective, trainable: int, total: int, processes: int
) -> RunStats:
    """What the automatic settings are chosen from: the prepared training items and the model."""
    lengths = [objective.length(x) for x in data.train]
    answers = [x.target_tokens for x in data.train if isinstance(getattr(x, "target_tokens", None), int)]
    return RunStats(
        rows=len(data.train), mean_tokens=sum(lengths) / max(len(lengths), 1),
        mean_answer_tokens=sum(answers) / len(answers) if answers else None, model_params=total,
        trainable_params=trainable, method=cfg.method.name, objective=cfg.objective.name, processes=processes,
    )  # fmt: skip


def run_training(
    cfg: TunelabConfig,
    *,
    config_path: Path | None = None,
    resume: bool = False,
    resume_changed: bool = False,
    console: Console | None = None,
    on_validation: ValidationHook | None = None,
) -> RunResult:
    """Train one run as configured and return where the run is and its before/after metrics. A config with
    `stages:` or `continual:` describes several runs: `tunelab.recipes.stages.run_stages` and
    `tunelab.recipes.continual.run.run_continual` train those.

    `resume` continues from the newest checkpoint that reads back whole, after checking that the config and data
    are those it was trained with (`recipes.resume`; `resume_changed` accepts differences on purpose).
    `on_validation` receives each evaluation during training (a study prunes with it: `train.hooks`)."""
    if cfg.stages or cfg.continual is not None:
        which = "continual:" if cfg.continual is not None else "stages:"
        raise ConfigError(
            f"The config has a `{which}` section, which describes several runs; run_training trains one. "
            "`tunelab train` picks the right recipe; in Python call run_stages or run_continual."
        )
    console = console or Console()
    require_deepspeed()  # before the Accelerator, which needs it on GPUs
    # accelerate forms a CPU process group (gloo) under torchrun only when told the run is on the CPU.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    run_dir = run_folder(cfg, config_path, resume) if main else run_path(cfg, config_path)
    if main:
        sweep_temporaries(run_dir)  # what a write killed half way (the result, a JSON file) left
    accelerator.wait_for_everyone()
    start_from, saved, warnings = None, None, []
    if resume:
        start_from, warnings = find_checkpoint(run_dir / "checkpoints")
        saved = read_identity(start_from) if start_from is not None else None
        cfg = saved_batch_size(cfg, saved, accelerator.num_processes)
        if saved is not None:  # the settings the run chose for `auto`, not chosen again
            cfg = cfg.model_copy(update={"training": adopt_saved(cfg.training, saved["config"].get("training", {}))})
    identity = run_identity(cfg)
    changes = check_resume(saved, identity, start_from, resume_changed)
    if main:
        for line in warnings:
            console.print(Text(line, style="yellow"))
        for line in changes:
            console.print(Text(f"resuming with a changed config: {line}", style="yellow"))
        if resume and start_from is None:
            console.print(f"{run_dir} has no checkpoint yet: the run starts from the beginning")
    # The trackers start (or fail) before anything trains; they close with the run's outcome.
    with replacing(run_dir, main) as replaced, tracking(cfg, run_dir, main, start_from, console) as tracker:
        return _train(cfg, run_dir, accelerator, console, start_from, identity, replaced.hooks, tracker, on_validation)


def _train(
    cfg: TunelabConfig,
    run_dir: Path,
    accelerator: Accelerator,
    console: Console,
    start_from: Path | None,
    identity: dict[str, Any],
    extra_hooks: list[StepHook],
    tracker: RunTracker,
    on_validation: ValidationHook | None = None,
) -> RunResult:
    """`run_training` once the run's folder and the checkpoint to start from (if any) are known."""
    main = accelerator.is_main_process
    resume = start_from is not None
    if main:
        write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    set_seed(cfg.training.seed)

    setup = setup_training(cfg, run_dir, accelerator, console)
    if setup.auto_reasons:  # the chosen numbers replace `auto` in the run's config, so a resume reuses them
        cfg = cfg.model_copy(update={"training": setup.training})
        if main:
            write_text(run_dir / CONFIG_FILE, dump_config(cfg))
    tracker.log_data_report(setup.data.report)
    tokenizer, objective, data, model, ctx = setup.tokenizer, setup.objective, setup.data, setup.model, setup.ctx
    method, device, bf16, built = setup.method, setup.device, setup.bf16, setup.built
    # Before training the model is the base model (LoRA's B starts at zero), so this is the baseline.
    baseline_file = run_dir / "eval_baseline.json"
    baseline = None
    if cfg.eval.baseline:
        if resume and baseline_file.is_file():
            baseline = json.loads(baseline_file.read_text())
        else:
            base_file = run_dir / "predictions_base.jsonl"
            baseline = evaluate(model, objective, tokenizer, data, cfg, device, bf16, base_file, generate=main, ctx=ctx,
                                rows_file=run_dir / VALIDATION_ROWS["base"])  # fmt: skip
            if main:
                write_text(baseline_file, json.dumps(baseline, indent=2))
                tracker.log_eval("eval_base", baseline, 0)

    if cfg.training.auto_batch_size:  # the chosen sizes go into the run's config, so a resume reuses them
        training = resolve_batch_size(
            cfg.training, model, objective, data.train, pad_id=setup.pad_id, accelerator=accelerator,
            bf16=bf16, ctx=ctx,
        )  # fmt: skip
        cfg = cfg.model_copy(update={"training": training})
        if main:
            write_text(run_dir / CONFIG_FILE, dump_config(cfg))
            console.print(f"auto batch size: {training.batch_size} per micro-batch x {training.grad_accum} accumulated")

    def save_result(trained: nn.Module) -> None:
        # Written whole or not at all (a temporary folder renamed into place), and before the final checkpoint.
        saved = artifact_dir(run_dir, cfg.method.name)
        then = f"resume the run to write the result (its checkpoints are intact): `tunelab train {run_dir} --resume`."
        with replacing_dir(saved, f"the trained result ({saved})", then) as tmp:
            method.save(objective.body(trained), tmp)
            if objective.save_extra is not None:
                objective.save_extra(trained, ctx, tmp)
            tokenizer.save_pretrained(tmp)

    # Save first, evaluate second: a crash in evaluation must not lose the trained weights. After sharded training
    # (FSDP) the result is an unsharded copy with the gathered weights, the same on every process. (Never through
    # accelerate's unwrap_model: it imports DeepSpeed whenever DeepSpeed is installed, which then prints a warning
    # into every run; the model given to `fit` is never wrapped, the training module around it is.)
    result = fit(
        model, objective, data.train, data.val, cfg.training, run_dir,
        pad_id=setup.pad_id, accelerator=accelerator, bf16=bf16, resume=start_from or False, ctx=ctx,
        schedule=data.schedule,  # curriculum / weighted sampling from data.schedule
        hooks=[*setup.hooks, *extra_hooks], head=built.output_layer(), learning_rates=built.learning_rates,
        identity={**identity, "config": cfg.model_dump(mode="json")},  # with the sizes auto_batch_size chose
        save_result=save_result, on_validation=on_validation, on_metrics=tracker.log_line,
    )  # fmt: skip
    if result.stopped_by:  # asked to stop: the checkpoint is saved; evaluating now would keep the process alive
        raise RunStopped(
            f"Stopped at step {result.steps} ({result.stopped_by}); the checkpoint is in {run_dir / 'checkpoints'}. "
            f"Train on with `tunelab train {run_dir} --resume`."
        )
    model = result.model
    tuned_file = run_dir / "predictions.jsonl"
    final = evaluate(model, objective, tokenizer, data, cfg, device, bf16, tuned_file, generate=main, ctx=ctx,
                     rows_file=run_dir / VALIDATION_ROWS["tuned"])  # fmt: skip
    final["steps"] = result.steps
    if main:
        write_text(run_dir / "eval.json", json.dumps(final, indent=2))
        _report(console, run_dir, baseline, final, cfg.eval.samples)
        fitting = diagnose_run(run_dir)  # diagnosis.json and learning_curves.png beside metrics.jsonl
        console.print(f"{fitting.summary()}; advice in {run_dir / DIAGNOSIS_FILE}")
        console.print(f"report: {run_report(run_dir)[0]}")
        tracker.log_eval("eval", final, result.steps)
        tracker.log_outputs(artifact_dir(run_dir, cfg.method.name), cfg.output.mlflow_log_model)
    accelerator.wait_for_everyone()
    model.eval()
    return RunResult(run_dir=run_dir, baseline=baseline, final=final, model=model, body=objective.body(model))


VALIDATION_ROWS = {"base": "validation_rows_base.jsonl", "tuned": "validation_rows.jsonl"}
"""Each validation row's sums (loss, count, correct) before and after training: the evidence of the validation
metrics' intervals and of their paired test."""


def evaluate(
    model: nn.Module,
    objective: Any,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    cfg: TunelabConfig,
    device: torch.device,
    bf16: bool,
    predictions_file: Path,
    *,
    generate: bool = True,
    ctx: Any = None,
    rows_file: Path | None = None,
) -> dict[str, float]:
    """Validation loss/perplexity/token accuracy, plus generation metrics when `eval.generate` is on (only on
    the main process under data parallelism: every rank would produce the same answers). With `rows_file` (and
    an objective whose loss is a sum over rows) each validation row's sums are written there, the evidence of
    those metrics' intervals."""
    if not data.val:
        return {}
    module = TrainingModule(model, objective, ctx)
    budget = token_budget(cfg.training.micro_batch_tokens, device)  # pieces as in training: the same sums
    pad = pad_id(tokenizer)
    rows: list[dict[str, float]] | None = [] if rows_file is not None else None
    metrics = validation_metrics(module, data.val, cfg.eval.batch_size, pad, device, bf16, budget, rows)
    if rows and rows_file is not None and generate:
        write_predictions(rows, rows_file)
    if objective.scores is not None:
        metrics.update(objective.scores(model, data.val, cfg.eval.batch_size, pad, device, bf16))
    scored = classifier_rows(model, data.val, cfg.eval.batch_size, pad, device, bf16) if generate else None
    if scored is not None:  # a classifier's own rows: intervals and paired tests in the before/after table
        metrics.update(classifier_metrics(scored, []))
        write_predictions(scored, predictions_file)
    if generate and cfg.eval.generate and data.val_examples:
        body = objective.body(model)
        gen, predictions = _generate(body, tokenizer, data.val_examples, cfg.eval, cfg.data.system_prompt, bf16)
        metrics.update(gen)
        write_predictions(predictions, predictions_file)
    return metrics


def _generate(model, tokenizer, examples, cfg: EvalSection, system_prompt, bf16) -> tuple[dict, list]:
    return generation_metrics(
        model, tokenizer, examples,
        max_examples=cfg.max_examples, max_new_tokens=generation_budget(cfg, tokenizer, examples),
        batch_size=cfg.batch_size, system_prompt=system_prompt, precision="bf16" if bf16 else "fp32",
        schema=load_schema(cfg.json_schema) if cfg.json_schema else None, similarity_encoder=cfg.similarity,
        long_prompts=cfg.long_prompts,
    )  # fmt: skip


def generation_budget(cfg: EvalSection, tokenizer: PreTrainedTokenizerBase, examples: list) -> int:
    """`eval.max_new_tokens`, or twice the longest reference answer plus 16 tokens (at most 512)."""
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens
    chosen = examples[: cfg.max_examples] if cfg.max_examples else examples
    longest = max(len(tokenizer(e.prompt_and_answer()[1], add_special_tokens=False)["input_ids"]) for e in chosen)
    return min(512, 2 * longest + 16)


def _print_data(console: Console, data: PreparedData, main: bool) -> None:
    if not main:
        return
    r = data.report
    console.print(
        f"data: {r['rows']:,} rows → {r['train_examples']:,} train / {r['val_examples']:,} validation, "
        f"{r['rejected']:,} rejected" + (f" (see {r['rejects_file']})" if r["rejected"] else "")
    )


def _report(console: Console, run_dir: Path, baseline: dict | None, final: dict, samples: int) -> None:
    """The before/after table with intervals and paired tests from both prediction files (also written to
    eval_stats.json: `tunelab.eval.compare.Comparison.to_dict`), then sample answers."""
    columns = {"base": (baseline, "predictions_base.jsonl"), "tuned": (final, "predictions.jsonl")}
    shown = {name: ({k: v for k, v in m.items() if k != "steps"}, read_predictions(run_dir / file))
             for name, (m, file) in columns.items() if name == "tuned" or baseline}  # fmt: skip
    summary = summarize(shown, validation={name: read_predictions(run_dir / VALIDATION_ROWS[name]) for name in shown})
    write_text(run_dir / "eval_stats.json", json.dumps(summary.to_dict(), indent=2))
    title = "Validation before and after training" if baseline else "Validation"
    console.print(comparison_table(summary, title=f"{title} ({summary.examples} examples)"))
    _print_samples(console, run_dir, samples)
    console.print(f"run folder: {run_dir}")


def _print_samples(console: Console, run_dir: Path, n: int) -> None:
    base_file, tuned_file = run_dir / "predictions_base.jsonl", run_dir / "predictions.jsonl"
    if not tuned_file.is_file():
        return
    tuned = [json.loads(x) for x in tuned_file.read_text().splitlines()[:n]]
    if tuned and "prompt" not in tuned[0]:  # a classifier's rows: its table says it all
        return
    base = [json.loads(x) for x in base_file.read_text().splitlines()[:n]] if base_file.is_file() else []
    for i, row in enumerate(tuned):
        console.print(f"[bold]prompt[/]: {row['prompt'][:200]}")
        console.print(f"  reference: {row['reference'][:200]}")
        if i < len(base):
            console.print(f"  base:      {base[i]['prediction'][:200]}")
        console.print(f"  tuned:     {row['prediction'][:200]}")


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
