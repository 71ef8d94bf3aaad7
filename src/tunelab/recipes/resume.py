"""What a resumed run must share with the run it continues, and the check that it does.

Every checkpoint stores the run's identity (`run_identity`): the whole resolved config and a digest of every data
file's contents. `--resume` compares the checkpoint's identity with the current one and refuses, listing the keys
that differ, unless told to accept them (`tunelab train --resume --resume-changed`): a changed method, target
modules, data, schedule, objective or model would otherwise be half restored (the optimizer state of one setup,
the weights or data order of another) without anyone noticing.

Keys that change how the run is carried out or reported, not what it trains, may differ (`SAFE_TO_CHANGE`):
logging, checkpoint frequency and count, CPU threads, memory knobs that leave the gradient as it is (micro-batch
pieces, activation checkpointing), where and how fast the data is prepared, and the evaluation after training.
`training.eval_every` is among them only without early stopping, where evaluations decide when training ends.
`output.*` is not compared: the run folder is the run. Data paths are compared by their files' contents, so data
moved elsewhere unchanged still resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.core.errors import ConfigError
from tunelab.core.files import file_digest
from tunelab.data.readers import FileProblem, expand_paths

SAFE_TO_CHANGE: dict[str, str] = {
    "training.log_every": "what is logged",
    "training.save_every": "how often checkpoints are written",
    "training.keep_checkpoints": "how many checkpoints are kept",
    "training.num_threads": "CPU threads",
    "training.max_time": "the time budget of each start (a run it stopped resumes with another)",
    "training.micro_batch_tokens": "memory: the same gradient in smaller pieces",
    "training.gradient_checkpointing": "memory: activations recomputed, the same gradient",
    "data.num_proc": "how fast the data is prepared",
    "data.cache": "whether the prepared data is cached",
    "data.cache_dir": "where the prepared data is cached",
    "eval.generate": "the evaluation after training",
    "eval.max_new_tokens": "the evaluation after training",
    "eval.max_examples": "the evaluation after training",
    "eval.samples": "the report after training",
    "eval.baseline": "the evaluation before training",
}
_SHOWN = 12


def data_digests(cfg: TunelabConfig) -> dict[str, list[list[str]]]:
    """[path, digest of its contents] for every file of data.train and data.validation, in order."""
    out: dict[str, list[list[str]]] = {}
    for split, paths in (("train", cfg.data.train), ("validation", cfg.data.validation)):
        try:
            files = expand_paths(paths)
        except FileProblem:
            files = [Path(p) for p in paths]  # the data pipeline reports the problem
        out[split] = [[str(f), file_digest(f)] for f in files]
    return out


def run_identity(cfg: TunelabConfig) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it: the resolved config and its data files' contents."""
    return {"config": cfg.model_dump(mode="json"), "data": data_digests(cfg)}


def _flat(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The differences between two identities that matter for the result, one `key: before → now` each."""
    before, after = dict(_flat(saved["config"])), dict(_flat(now["config"]))
    early_stopping = before.get("training.early_stopping_patience") or after.get("training.early_stopping_patience")
    safe = set(SAFE_TO_CHANGE) | (set() if early_stopping else {"training.eval_every"})
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if key.startswith("output.") or key in safe or key in ("data.train", "data.validation"):
            continue
        old, new = before.get(key, "(unset)"), after.get(key, "(unset)")
        if old != new:
            changes.append(f"{key}: {_short(old)} → {_short(new)}")
    for split in ("train", "validation"):
        old_digests = [d for _, d in saved["data"].get(split, [])]
        new_digests = [d for _, d in now["data"].get(split, [])]
        if old_digests != new_digests:
            names = ", ".join(p for p, _ in now["data"].get(split, [])) or "(none)"
            changes.append(f"data.{split}: the files' contents differ from those trained on (now {_short(names)})")
    return changes


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume(saved: dict[str, Any] | None, now: dict[str, Any], checkpoint: Path | None, accept: bool) -> list[str]:
    """Raise a ConfigError listing what differs between the checkpoint's identity and the current one, unless
    `accept`; return the differences (to print when accepted)."""
    if saved is None:
        return []
    changes = config_changes(saved, now)
    if changes and not accept:
        listed = "; ".join(changes[:_SHOWN]) + (f"; and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else "")
        raise ConfigError(
            f"Cannot resume from {checkpoint}: the config differs from the one this checkpoint was trained with "
            f"({listed}). Resuming would continue the old run's weights, optimizer and data order under the new "
            "settings. Resume with the run's own config (`tunelab train RUN_FOLDER --resume`), undo the changes, "
            "or add --resume-changed to continue with the new values on purpose."
        )
    return changes


def saved_batch_size(cfg: TunelabConfig, saved: dict[str, Any] | None, world: int) -> TunelabConfig:
    """With `training.auto_batch_size`, `cfg` with the micro-batch size and accumulation the checkpoint's run chose
    (its config holds them, auto_batch_size off) when they make the same global batch, so that a resume continues
    with them instead of choosing again (and the comparison sees the run's own sizes)."""
    t = cfg.training
    if saved is None or not t.auto_batch_size:
        return cfg
    chosen = saved["config"].get("training", {})
    micro, accum = chosen.get("batch_size"), chosen.get("grad_accum")
    if not isinstance(micro, int) or not isinstance(accum, int):
        return cfg
    if micro * accum * world != (t.global_batch_size or t.batch_size * t.grad_accum * world):
        return cfg  # another global batch: left for the comparison to report
    update = {"batch_size": micro, "grad_accum": accum, "auto_batch_size": False, "global_batch_size": None}
    return cfg.model_copy(update={"training": t.model_copy(update=update)})
