"""Merging tiny models and LoRA adapters end to end: results load with transformers/peft and match the maths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab.cli.main import main
from tunelab.core.errors import ConfigError, ModelError
from tunelab.export.merging.config import load_merge_config, parse_merge_config
from tunelab.export.merging.lora import LoraFactor, concat_factors, read_adapter
from tunelab.export.merging.merge import merge_models
from tunelab.export.merging.tensors import MERGE_METHODS, merge_deltas, tensor_generator

IDS = torch.tensor([[5, 17, 42, 9, 77, 3]])


def _finetuned(base: Path, out: Path, seed: int) -> Path:
    """A 'fine-tuned' copy of the tiny model: every weight moved by seeded noise."""
    model = AutoModelForCausalLM.from_pretrained(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


def _adapter(base: Path, out: Path, seed: int, targets: list[str], **kw) -> Path:
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=targets, **kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_ties_merge_of_two_models_loads_and_matches_the_maths(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _finetuned(tiny_model_dir, tmp_path / "a", 1)
    b = _finetuned(tiny_model_dir, tmp_path / "b", 2)
    out = tmp_path / "merged"
    argv = ["merge-models", "--method", "ties", "--base", str(tiny_model_dir), "--model", str(a), "--model", str(b)]
    assert main([*argv, "--weight", "0.7", "--weight", "0.3", "--density", "0.4", "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(_logits(merged)).all()
    name = "model.layers.0.self_attn.q_proj.weight"
    base_w, wa, wb = (load_file(p / "model.safetensors")[name] for p in (tiny_model_dir, a, b))
    mixed = merge_deltas(MERGE_METHODS["ties"], [wa - base_w, wb - base_w], [0.7, 0.3], [0.4, 0.4], normalize=True)
    assert torch.allclose(merged.state_dict()[name], base_w + mixed, atol=1e-6)
    assert (out / "tokenizer.json").is_file() and (out / "merge_config.yaml").is_file()
    assert main([*argv, "--out", str(out)]) == 2, "a non-empty output folder is refused"


def test_linear_merge_of_identical_models_is_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _finetuned(tiny_model_dir, tmp_path / "a", 1)
    cfg = parse_merge_config(
        {"merge_method": "linear", "models": [{"model": str(a)}, {"model": str(a)}], "dtype": "bfloat16"}
    )
    merge_models(cfg, tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.dtype == torch.bfloat16
    assert torch.allclose(_logits(merged.float()), _logits(AutoModelForCausalLM.from_pretrained(a)), atol=0.1)


def test_adapter_delta_matches_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _adapter(
        tiny_model_dir, tmp_path / "ad", 0, ["q_proj", "embed_tokens"], lora_alpha=6, use_rslora=True,
        alpha_pattern={"layers\\.1\\.self_attn\\.q_proj": 3.0},
    )  # fmt: skip
    adapter = read_adapter(folder)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.embed_tokens"):
        layer = peft_model.base_model.model.get_submodule(name)
        assert torch.allclose(adapter.factors[name + ".weight"].delta(), layer.get_delta_weight("default"), atol=1e-6)
    # rsLoRA with r = 2: alpha / sqrt(2); the pattern gives layer 1 alpha 3.
    assert adapter.factors["model.layers.1.self_attn.q_proj.weight"].scale == pytest.approx(3.0 / math.sqrt(2))


def test_concatenated_factors_are_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    f1 = LoraFactor(torch.randn(2, 5, generator=gen), torch.randn(4, 2, generator=gen), 2.0)
    f2 = LoraFactor(torch.randn(3, 5, generator=gen), torch.randn(4, 3, generator=gen), 0.5)
    cat = concat_factors([(f1, 0.25), (f2, 0.75)])
    assert cat.a.shape == (5, 5) and cat.scale == 1.0
    assert torch.allclose(cat.delta(), 0.25 * f1.delta() + 0.75 * f2.delta(), atol=1e-6)


def test_two_adapters_merge_into_one_adapter_equal_to_the_full_merge(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _adapter(tiny_model_dir, tmp_path / "a", 1, ["q_proj", "v_proj"])
    b = _adapter(tiny_model_dir, tmp_path / "b", 2, ["q_proj", "down_proj"])
    recipe = {
        "merge_method": "task_arithmetic", "base_model": str(tiny_model_dir),
        "models": [{"model": str(a), "parameters": {"weight": 0.6}}, {"model": str(b), "parameters": {"weight": 0.9}}],
        "parameters": {"lambda": 0.5},
    }  # fmt: skip
    report = merge_models(parse_merge_config(recipe), tmp_path / "adapter")
    assert report.kind == "adapter"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4, "rank 2 + 2, scale 1"
    merge_models(parse_merge_config({**recipe, "output": "model"}), tmp_path / "full")
    via_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert torch.allclose(_logits(via_adapter), _logits(full), atol=1e-4)
    # and the full merge is base + 0.5 * (0.6 ΔW_a + 0.9 ΔW_b) on a module both adapters touch
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = load_file(tiny_model_dir / "model.safetensors")[name] + 0.5 * (
        0.6 * read_adapter(a).factors[name].delta() + 0.9 * read_adapter(b).factors[name].delta()
    )
    assert torch.allclose(full.state_dict()[name], expected, atol=1e-6)


def test_ties_adapters_to_adapter_needs_a_rank_and_reports_the_svd_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _adapter(tiny_model_dir, tmp_path / "a", 1, ["q_proj"])
    b = _adapter(tiny_model_dir, tmp_path / "b", 2, ["q_proj"])
    recipe = {
        "merge_method": "dare_ties", "base_model": str(tiny_model_dir), "output": "adapter", "seed": 3,
        "models": [{"model": str(a)}, {"model": str(b)}], "parameters": {"density": 0.5},
    }  # fmt: skip
    with pytest.raises(ConfigError, match="rank"):
        merge_models(parse_merge_config(recipe), tmp_path / "x")
    full_rank = merge_models(parse_merge_config({**recipe, "rank": 48}), tmp_path / "r48")
    assert full_rank.svd_error == pytest.approx(0.0, abs=1e-5)
    low = merge_models(parse_merge_config({**recipe, "rank": 2}), tmp_path / "r2")
    assert 0 < low.svd_error < 1
    # the rank-48 adapter reproduces the full dare_ties merge (same seeded masks)
    merge_models(parse_merge_config({**recipe, "output": "model"}), tmp_path / "full")
    name = "model.layers.1.self_attn.q_proj.weight"
    base_w = load_file(tiny_model_dir / "model.safetensors")[name]
    deltas = [read_adapter(f).factors[name].delta() for f in (a, b)]
    gens = [tensor_generator(3, name, i) for i in range(2)]
    mixed = merge_deltas(MERGE_METHODS["dare_ties"], deltas, [1, 1], [0.5, 0.5], normalize=False, generators=gens)
    full = load_file(tmp_path / "full" / "model.safetensors")[name]
    assert torch.allclose(full, base_w + mixed, atol=1e-6)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "r48")
    assert torch.allclose(_logits(peft), _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "full")), atol=1e-4)


def test_bad_inputs_are_user_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _adapter(tiny_model_dir, tmp_path / "a", 1, ["q_proj"], use_dora=True)
    with pytest.raises(ModelError, match="DoRA"):
        read_adapter(a)
    recipe = {"merge_method": "ties", "base_model": str(tiny_model_dir), "models": [{"model": str(a)}]}
    with pytest.raises(ModelError, match="DoRA"):
        merge_models(parse_merge_config(recipe), tmp_path / "o3")
    assert not (tmp_path / "o3").exists() and not (tmp_path / ".o3.partial").exists(), "nothing half-written"
    with pytest.raises(ConfigError, match="base_model"):
        merge_models(
            parse_merge_config({"merge_method": "ties", "models": [{"model": str(tiny_model_dir)}]}), tmp_path / "o"
        )
    assert main(["merge-models", "--out", str(tmp_path / "o2"), "--method", "ties", "--model", "nope-model"]) == 2


def test_mergekit_yaml_recipe_with_the_base_listed_among_the_models(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _finetuned(tiny_model_dir, tmp_path / "a", 1)
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        f"models:\n  - model: {tiny_model_dir}\n    # no parameters necessary for base model\n"
        f"  - model: {a}\n    parameters:\n      weight: 0.5\n      density: 0.5\n"
        f"merge_method: dare_linear\nbase_model: {tiny_model_dir}\nparameters:\n  int8_mask: true\n  lambda: 2.0\n"
        "dtype: float32\n"
    )
    assert main(["merge-models", str(recipe), "--out", str(tmp_path / "out")]) == 0
    name = "model.layers.1.mlp.up_proj.weight"
    base_w, wa = (load_file(p / "model.safetensors")[name] for p in (tiny_model_dir, a))
    gens = [tensor_generator(0, name, 0)]
    mixed = merge_deltas(MERGE_METHODS["dare_linear"], [wa - base_w], [0.5], [0.5], normalize=False, lam=2.0,
                         generators=gens)  # fmt: skip
    assert torch.allclose(load_file(tmp_path / "out" / "model.safetensors")[name], base_w + mixed, atol=1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"merge_method: ties\nmodels:\n  - model: {a}\n    parameters:\n      wieght: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:5: unknown key 'models.0.parameters.wieght'.*'weight'"):
        load_merge_config(bad)
