"""lm-evaluation-harness, the field's standard benchmark runner, on a model tunelab has loaded.

The loaded transformers model goes to lm-eval's `HFLM` as an object (adapters merged into it first: HFLM takes a
`PreTrainedModel`), so a run folder, a merged model or any model source is evaluated as `tunelab eval` loads it.
Tasks come from local YAML files (`--harness-tasks-dir`), written as lm-eval writes them; a dataset from a local
file is `dataset_path: json` with `dataset_kwargs: {data_files: ...}`, and a relative `data_files` path is read from
the task file's folder (lm-eval itself would read it from the working directory). Nothing is downloaded: the
Hugging Face libraries run offline, so a built-in lm-eval task works only when its dataset is in the local cache.

Each document's scores come back as rows (prompt, reference, prediction, one field per metric), so the metrics
get the same bootstrap intervals and paired tests as every other `tunelab eval` table.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.core.device import default_device
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.core.logs import loggers_at

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # task datasets are local files or the local cache, never fetched

Rows = list[dict[str, Any]]


@dataclass
class HarnessResult:
    metrics: dict[str, dict[str, float]]
    """Per task, lm-eval's aggregate of each metric (`exact_match`; `acc_norm`; a filtered one as `metric[filter]`)."""
    rows: dict[str, Rows]
    """Per task, one row per document: doc_id, prompt, reference, prediction and each metric's per-document score."""
    raw: dict[str, Any] = field(default_factory=dict)
    """lm-eval's own results, task configs and sample counts, as JSON-safe values."""


def run_harness(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    tasks_dir: Path | None = None,
    *,
    limit: int | None = None,
    shots: int | None = None,
    batch_size: int = 8,
    system: str | None = None,
    chat: bool | None = None,
) -> HarnessResult:
    """Evaluate `model` on lm-eval `tasks` (names of tasks in `tasks_dir`, or built-in ones whose data is cached).
    `limit` documents per task, `shots` few-shot examples (the task's own default when None), `chat` wraps prompts
    in the tokenizer's chat template (default: when it has one, as tunelab's chat models are trained). `model` is
    moved to the GPU when there is one (a peft model's merged copy is)."""
    lm_eval, hflm = _require_lm_eval()
    manager = task_manager(tasks, tasks_dir)
    specs = [task_spec(manager, name) for name in tasks]
    chat = tokenizer.chat_template is not None if chat is None else chat
    with loggers_at(logging.ERROR, "lm_eval", "lm-eval"):
        # HFLM runs on the device the model is on: the GPU when there is one.
        plain = plain_model(model)
        cast(nn.Module, plain).to(default_device())  # in place
        lm = hflm(pretrained=plain, tokenizer=tokenizer, batch_size=batch_size)
        try:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=specs, task_manager=manager, limit=limit, num_fewshot=shots, log_samples=True,
                bootstrap_iters=0, system_instruction=system, apply_chat_template=chat, fewshot_as_multiturn=chat,
            )  # fmt: skip
        except (FileNotFoundError, ValueError, KeyError, ConnectionError) as error:
            raise TunelabError(
                f"lm-evaluation-harness could not run {', '.join(tasks)}: {type(error).__name__}: {str(error)[:400]}. "
                "Check the task files (dataset_path, data_files, the split names, doc_to_text/doc_to_target)."
            ) from error
    if out is None:
        raise TunelabError("lm-evaluation-harness returned no results (it runs on the main process only).")
    return collect(out, tasks)


def task_manager(tasks: list[str], tasks_dir: Path | None) -> Any:
    """lm-eval's task index: the task files of `tasks_dir`, or without one lm-eval's built-in tasks (indexing those
    takes half a minute, and their datasets must already be in the local cache). An unknown name is a
    `ConfigError` listing the tasks there are."""
    from lm_eval.tasks import TaskManager  # optional package (the `harness` extra), imported when used

    if tasks_dir is not None and not tasks_dir.is_dir():
        raise ConfigError(f"--harness-tasks-dir '{tasks_dir}' is not a folder: give the folder of lm-eval task YAMLs.")
    include = str(tasks_dir) if tasks_dir is not None else None
    manager = TaskManager(include_path=include, include_defaults=include is None)
    missing = [name for name in tasks if name not in manager.task_index]
    if missing:
        where = f"in {tasks_dir} (its tasks: {', '.join(sorted(manager.all_tasks)) or 'none'})" if include else (
            "among lm-eval's built-in tasks (for your own task files give --harness-tasks-dir)")  # fmt: skip
        raise ConfigError(
            f"--harness: no lm-eval task named {', '.join(map(repr, missing))} {where}. Give the `task:` name a "
            "task file declares."
        )
    return manager


def task_spec(manager: Any, name: str) -> str | dict[str, Any]:
    """A task by name, or, for a local task file whose `data_files` are relative paths, its config with those
    paths made absolute from the task file's folder."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own task-file reader (includes, !function)

    entry = manager.task_index[name]
    if entry.yaml_path is None:
        return name
    config = load_yaml(entry.yaml_path, resolve_func=True)
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return name
    config = copy.deepcopy(config)
    config["dataset_kwargs"]["data_files"] = _absolute(files, Path(entry.yaml_path).parent)
    return config


def _absolute(files: Any, folder: Path) -> Any:
    if isinstance(files, dict):
        return {split: _absolute(f, folder) for split, f in files.items()}
    if isinstance(files, list):
        return [_absolute(f, folder) for f in files]
    path = Path(str(files))
    return str(path if path.is_absolute() or "://" in str(files) else folder / path)


def plain_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model HFLM takes: a peft model's adapters merged into a copy of its weights."""
    if hasattr(model, "merge_and_unload"):
        model = cast(Any, copy.deepcopy(model)).merge_and_unload()
    if not isinstance(model, PreTrainedModel):
        raise ConfigError(
            f"--harness evaluates a transformers model; this one is a {type(model).__name__} (a prompt or prefix "
            "tuning run, an ensemble, or a classifier head), which lm-eval cannot drive. Evaluate a LoRA/full run, "
            "or a model merged with `tunelab export`."
        )
    return model.eval()


def collect(out: dict[str, Any], tasks: list[str]) -> HarnessResult:
    """lm-eval's output as per-task metrics and per-document rows."""
    metrics: dict[str, dict[str, float]] = {}
    for task in tasks:
        found = {}
        for key, value in out["results"].get(task, {}).items():
            metric, _, kind = key.partition(",")
            if not kind or "_stderr" in metric or not _is_number(value):
                continue
            found[metric if kind == "none" else f"{metric}[{kind}]"] = float(value)
        metrics[task] = found
    rows = {task: _rows(out.get("samples", {}).get(task, []), metrics[task]) for task in tasks}
    raw = {k: _json_safe(out.get(k)) for k in ("results", "configs", "n-samples", "versions", "n-shot")}
    return HarnessResult(metrics, rows, raw)


def _rows(samples: list[dict[str, Any]], metrics: dict[str, float]) -> Rows:
    """One row per document; with several filters (one sample each), each filter's scores as `metric[filter]`."""
    rows: dict[Any, dict[str, Any]] = {}
    for sample in samples:
        kind = sample.get("filter", "none")
        row = rows.setdefault(sample.get("doc_id"), _row(sample))
        for metric in metrics:
            name, _, wanted = metric.partition("[")
            value = sample.get(name)
            if (wanted.rstrip("]") or "none") == kind and value is not None and _is_number(value):
                row[metric] = float(value)
    return list(rows.values())


def _row(sample: dict[str, Any]) -> dict[str, Any]:
    arguments = sample.get("arguments") or [[""]]
    responses = sample.get("filtered_resps") or [""]
    return {
        "doc_id": sample.get("doc_id"),
        "prompt": str(arguments[0][0]),
        "reference": str(sample.get("target", "")),
        "prediction": responses[0] if isinstance(responses[0], str) else repr(_json_safe(responses)),
    }


def _is_number(value: Any) -> bool:
    try:
        return not isinstance(value, bool | str) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if _is_number(value):
        return float(value)
    return str(value)


def _require_lm_eval() -> tuple[Any, Any]:
    try:
        import lm_eval  # optional package (the `harness` extra), imported when used
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ConfigError(
            "--harness runs lm-evaluation-harness, which is not installed: `pip install lm-eval` (or "
            "`pip install 'tunelab[harness]'`)."
        ) from error
    return lm_eval, HFLM
