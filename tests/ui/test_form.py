"""The start-a-run form covers the config schema: every field a run reads has an input (sub-sections, lists,
mappings and lists of structures included), and what is typed into them becomes the same config `tunelab validate`
would build from the equivalent YAML."""

from __future__ import annotations

import types
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tests.tiny import write_color_task
from tunelab.config import TunelabConfig, load_config
from tunelab.core.errors import ConfigError
from tunelab.methods.registry import METHOD_CONFIGS
from tunelab.objectives.registry import OBJECTIVE_CONFIGS
from tunelab.ui.app import create_app
from tunelab.ui.config_form import HIDDEN, config_from_form, form_sections
from tunelab.ui.state import Settings


def section_in(annotation: object) -> type[BaseModel] | None:
    """The section an annotation holds (`X` or `X | None`), if any."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    found = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
    return found[0] if found else None


def leaf_keys(prefix: str, section: type[BaseModel] | None) -> set[str]:
    """Every dotted key of a section that holds a value (sub-sections walked into), independently of the form."""
    assert section is not None
    keys = set()
    for name, info in section.model_fields.items():
        key, sub = f"{prefix}.{name}", section_in(info.annotation)
        keys |= leaf_keys(key, sub) if sub is not None else {key}
    return keys


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_every_field_of_every_method_and_objective_has_an_input(method: str) -> None:
    for objective in OBJECTIVE_CONFIGS:
        shown = {f.key for _, fields in form_sections(method, objective) for f in fields}
        expected = {"stages"}
        for name in ("model", "data", "training", "eval", "output", "continual"):
            expected |= leaf_keys(name, section_in(TunelabConfig.model_fields[name].annotation))
        expected |= leaf_keys("method", METHOD_CONFIGS[method]) | leaf_keys("objective", OBJECTIVE_CONFIGS[objective])
        missing = {k for k in expected - shown - HIDDEN if not k.endswith(".name") or k.count(".") > 2}
        assert not missing, (method, objective, sorted(missing))


@pytest.fixture
def setting(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    runs, model, data = tmp_path / "runs", tmp_path / "model", tmp_path / "data" / "color.jsonl"
    runs.mkdir()
    model.mkdir()
    data.parent.mkdir()
    write_color_task(data, 20)
    base = {"model.source": str(model), "data.train": str(data), "method.name": "lora", "objective.name": "sft"}
    return runs, tmp_path, base


def test_nested_lists_mappings_and_switched_sections_become_the_config(setting) -> None:
    runs, allowed, base = setting
    values = {
        **base,
        "data.clean.dedup": "exact",
        "data.clean.pii": "email, phone",
        "method.target_modules": "q_proj, v_proj",
        "method.rank_pattern": "{'.*layers\\.0\\..*': 32}",
        "training.adam_betas": "0.8, 0.95",
        "training.micro_batch_tokens": "256",
        "training.fused_modules": "false",
        "training.task_weights": "colors: 2.0\nother: 0.5",
        "training.adversarial": "on",
        "training.adversarial.epsilon": "0.5",
        "continual": "on",
        "continual.ewc.lam": "5",  # its section (continual.ewc) is off: not applied
        "output.report_to": "tensorboard",
    }
    cfg = config_from_form(values, runs, [allowed], "nested")
    text = "\n".join([
        f"model: {{source: {base['model.source']}}}", f"data: {{train: [{base['data.train']}], clean: "
        "{dedup: exact, pii: [email, phone]}}", "method: {name: lora, target_modules: [q_proj, v_proj], "
        "rank_pattern: {'.*layers\\.0\\..*': 32}}", "training: {adam_betas: [0.8, 0.95], micro_batch_tokens: 256, "
        "fused_modules: false, task_weights: {colors: 2.0, other: 0.5}, adversarial: {epsilon: 0.5}}",
        "output: {report_to: [tensorboard]}", "continual: {}",
    ])  # fmt: skip
    (allowed / "same.yaml").write_text(text)
    same = load_config(allowed / "same.yaml")
    dump = cfg.model_dump(exclude={"output": {"dir", "name"}})
    assert dump == same.model_dump(exclude={"output": {"dir", "name"}})
    assert cfg.training.adversarial is not None and cfg.training.adversarial.epsilon == 0.5
    assert cfg.continual.ewc is None and cfg.method.target_modules == ["q_proj", "v_proj"]  # type: ignore[union-attr]
    # The word a list setting may also be, and a mapping left as its default, stay as they were.
    plain = config_from_form({**base, "method.target_modules": "all-linear", "training.task_weights": "{}"}, runs,
                             [allowed], "plain")  # fmt: skip
    assert plain.method.target_modules == "all-linear" and plain.training.task_weights == {}  # type: ignore[union-attr]


def test_a_list_of_structures_and_its_errors(setting) -> None:
    runs, allowed, base = setting
    rewards = "- {name: length, target: 4, weight: 0.5}\n- {name: regex, pattern: '^[a-z]+$'}"
    cfg = config_from_form({**base, "objective.name": "grpo", "objective.rewards": rewards}, runs, [allowed], "g")
    assert [r.name for r in cfg.objective.rewards] == ["length", "regex"]  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"'objective\.rewards': this is not valid YAML"):
        config_from_form({**base, "objective.name": "grpo", "objective.rewards": "- [unclosed"}, runs, [allowed], "g")
    c = TestClient(create_app(Settings(runs, data_dirs=[allowed])), base_url="http://127.0.0.1")
    page = c.get("/new?objective.name=grpo")
    assert page.status_code == 200 and '<textarea name="objective.rewards"' in page.text
    assert 'name="training.adversarial.epsilon"' in page.text and 'name="data.clean.dedup"' in page.text
    bad = c.post("/new", data={"run_name": "g", **base, "training.task_weights": "[1, 2]",
                               "training.adversarial": "on", "training.adversarial.epsilon": "-1"})  # fmt: skip
    assert bad.status_code == 422 and bad.text.count('class="field invalid"') == 2
    assert not (runs / "g").exists()
