"""Multi-stage runs (`stages:`): each stage is a whole run in its own sub-folder of the run folder, starting
from the weights the previous stage ended with (an adapter is merged into its base first).

Typical: continued pretraining on domain text, then SFT on instructions; or SFT, then DPO.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from tunelab.config import OutputSection, TunelabConfig, dump_config
from tunelab.core.files import write_text
from tunelab.methods.trained import artifact_dir, save_merged
from tunelab.recipes.run import run_training
from tunelab.recipes.runs import replacing, run_folder, run_path

STAGES_CONFIG = "stages.yaml"
"""The whole multi-stage config, in the run folder. Not `config.yaml`: the run folder itself is not one run;
each stage's sub-folder is (load the last one for inference)."""


def stage_config(cfg: TunelabConfig, k: int, source: str, run_dir: Path) -> TunelabConfig:
    """Stage `k` as a single-stage run config: its sections, the given model source, a sub-folder of `run_dir`."""
    stage = cfg.stages[k]
    model = cfg.model.model_copy(update={"source": source})
    output = OutputSection(dir=str(run_dir), name=stage.name, overwrite=cfg.output.overwrite)
    sections = {"data": stage.data, "objective": stage.objective, "method": stage.method}
    return cfg.model_copy(update={**sections, "training": stage.training, "eval": stage.eval, "model": model,
                                  "output": output, "stages": []})  # fmt: skip


def stage_weights(stage_dir: Path, cfg: TunelabConfig) -> str:
    """A model source holding what a finished stage trained: its model folder, or its adapter merged into the base
    (written once to `merged/`)."""
    saved = artifact_dir(stage_dir, cfg.method.name)
    if saved.name == "model":
        return str(saved)
    merged = stage_dir / "merged"
    if not (merged / "config.json").is_file():
        save_merged(str(stage_dir), merged)
    return str(merged)


def run_stages(
    cfg: TunelabConfig,
    *,
    config_path: Path | None = None,
    resume: bool = False,
    resume_changed: bool = False,
    console=None,
):
    """Run every stage in order and return the last stage's result (its run folder is a sub-folder); None when
    resuming finds every stage finished. `stages.json` in the run folder sums up each stage's final metrics.
    A run replaced by `output.overwrite` is dropped once the first stage has trained (put back if it fails)."""
    console = console or Console()
    run_dir = run_folder(cfg, config_path, resume=False) if not resume else _existing(cfg, config_path)
    with replacing(run_dir) as replaced:
        write_text(run_dir / STAGES_CONFIG, dump_config(cfg))
        source, result, summary = cfg.model.source, None, []
        for k, stage in enumerate(cfg.stages):
            stage_cfg = stage_config(cfg, k, source, run_dir)
            stage_dir = run_dir / stage.name
            console.rule(f"stage {k + 1}/{len(cfg.stages)}: {stage.name} ({stage.objective.name}, {stage.method.name})")
            done = (stage_dir / "eval.json").is_file()
            if not (resume and done):
                started = (stage_dir / "checkpoints").is_dir()
                result = run_training(stage_cfg, resume=resume and started, resume_changed=resume_changed,
                                      console=console)  # fmt: skip
                final = result.final
            else:
                final = json.loads((stage_dir / "eval.json").read_text())
            replaced.drop()
            summary.append({"stage": stage.name, "objective": stage.objective.name, **final})
            source = stage_weights(stage_dir, stage_cfg)
        write_text(run_dir / "stages.json", json.dumps(summary, indent=2))
    return result


def _existing(cfg: TunelabConfig, config_path: Path | None) -> Path:
    run_dir = run_path(cfg, config_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
