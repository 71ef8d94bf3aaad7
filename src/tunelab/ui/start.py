"""Starting a run from the dashboard: from the form or an uploaded YAML, validated as `tunelab validate` does,
its paths checked, refused when the run name is taken, then started as `tunelab train CONFIG` in the runs folder.

The config the process runs is the validated one written out in full (`dump_config`, absolute paths) to
`RUNS/.tunelab-ui/configs/NAME.yaml`; the run folder gets its own config.yaml from `tunelab train` as always.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig, dump_config, load_config
from tunelab.core.errors import ConfigError, TunelabError
from tunelab.core.files import write_text
from tunelab.core.safe_yaml import MAX_BYTES
from tunelab.methods.registry import METHOD_CONFIGS
from tunelab.objectives.registry import OBJECTIVE_CONFIGS
from tunelab.ui.config_form import checked_config, config_from_form, field_errors, form_sections
from tunelab.ui.jobs import state_dir
from tunelab.ui.paths import check_run_name
from tunelab.ui.state import Dashboard


def new_form(values: dict[str, str], error: str | None = None) -> dict[str, Any]:
    """The form's template context: its sections for the chosen method and objective, the values given, errors."""
    method = values.get("method.name") if values.get("method.name") in METHOD_CONFIGS else "lora"
    objective = values.get("objective.name") if values.get("objective.name") in OBJECTIVE_CONFIGS else "sft"
    return {"sections": form_sections(str(method), str(objective)), "values": values, "error": error,
            "field_errors": field_errors(error) if error else {}}  # fmt: skip


def _refuse_taken(dash: Dashboard, name: str) -> None:
    folder = dash.settings.runs.resolve() / name
    if dash.jobs.running(name):
        raise ConfigError(f"Run '{name}' is already running. Choose another run name, or stop that run first.")
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"A run named '{name}' already exists in the runs folder. Resume it from its page, or "
                          "choose another run name.")  # fmt: skip


def _launch(dash: Dashboard, cfg: TunelabConfig, name: str) -> str:
    root = dash.settings.runs.resolve()
    path = state_dir(root) / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, dump_config(cfg))
    # Empty, so `tunelab train` takes it as a fresh run folder; the run's page opens before its first file.
    (root / name).mkdir(exist_ok=True)
    dash.jobs.start(name, [str(path), "--set", f"output.dir={root}", "--set", f"output.name={name}"])
    return name


def start_from_form(dash: Dashboard, values: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """Start the run the form describes: (its name, {}) or (None, the form's context with the errors)."""
    try:
        name = check_run_name(values.get("run_name", "").strip())
        cfg = config_from_form(values, dash.settings.runs.resolve(), dash.settings.readable, name)
        _refuse_taken(dash, name)
        return _launch(dash, cfg, name), {}
    except TunelabError as exc:
        return None, new_form(values, str(exc))


def start_from_yaml(dash: Dashboard, text: str, name: str) -> tuple[str | None, dict[str, Any]]:
    """Start the run an uploaded YAML describes (bounded and validated like a config file; relative data paths
    are taken from the runs folder)."""
    values = {"run_name": name, "yaml_text": text}
    root = dash.settings.runs.resolve()
    upload: Path | None = None
    try:
        name = check_run_name(name.strip())
        upload = root / f".upload-{name}.yaml"
        if len(text.encode()) > MAX_BYTES:
            raise ConfigError(
                f"The uploaded config is larger than {MAX_BYTES >> 20} MiB; a config holds settings only."
            )
        upload.write_text(text, encoding="utf-8")
        cfg = checked_config(load_config(upload), root, dash.settings.readable, name)
        _refuse_taken(dash, name)
        return _launch(dash, cfg, name), {}
    except TunelabError as exc:
        return None, new_form(values, str(exc))
    finally:
        if upload is not None:
            upload.unlink(missing_ok=True)
