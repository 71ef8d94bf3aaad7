"""Mixture-of-experts training on tiny random MoE models built from their real config classes: the router's
load-balancing loss is the one transformers computes, the z-loss is hand-checked, expert load is logged per layer,
LoRA reaches the experts (peft loads the adapter, a merge keeps the expert tensors), and router options on a dense
model are a clear error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from tests.helpers import tiny_config
from tests.tiny_families import build_family
from tunelab.core.errors import ConfigError
from tunelab.core.types import LossParts
from tunelab.methods.lora import expert_parameters
from tunelab.methods.trained import save_merged
from tunelab.objectives.base import Objective
from tunelab.objectives.sft import OBJECTIVE as SFT
from tunelab.recipes.run import run_training
from tunelab.regularizers.moe import RouterLosses, router_losses, routers

MOE = ["mixtral", "qwen3_moe", "olmoe"]


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {t: build_family(t, tmp_path_factory.mktemp(t)) for t in MOE}


def _plain() -> Objective:
    """An objective whose loss is the causal-LM loss summed over targets (as SFT's is)."""

    def loss(m: torch.nn.Module, batch: dict, ctx) -> LossParts:
        out = m(input_ids=batch["input_ids"], labels=batch["input_ids"])
        count = torch.tensor(float(batch["input_ids"][:, 1:].numel()))
        return LossParts(out.loss * count, count)

    return dataclasses.replace(SFT, loss=loss)


@pytest.mark.parametrize("model_type", MOE)
def test_aux_loss_is_transformers_own_and_z_loss_is_the_mean_squared_logsumexp(model_type, moe_dirs) -> None:
    model = AutoModelForCausalLM.from_pretrained(moe_dirs[model_type]).train()
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = model(input_ids=ids, output_router_logits=True)
    wrapper = RouterLosses(model, aux_coef=0.5, z_coef=0.25)
    objective = _plain()
    plain = objective.loss(model, {"input_ids": ids}, None)
    parts = wrapper.wrap(objective).loss(model, {"input_ids": ids}, None)
    z = torch.stack([torch.logsumexp(r.float(), -1).square().mean() for r in reference.router_logits]).mean()
    experts, k = wrapper.num_experts, wrapper.top_k
    per_layer = torch.stack([load_balancing_loss_func((r,), experts, k) for r in reference.router_logits]).mean()
    extra = 0.5 * per_layer + 0.25 * z
    assert len(reference.router_logits) == len(routers(model)) == 2
    assert parts.loss_sum.item() == pytest.approx((plain.loss_sum + extra * plain.count).item(), rel=1e-5)
    assert wrapper.last["moe_aux_loss"] == pytest.approx(per_layer.item(), rel=1e-5)
    # `pooled` is the loss the model itself adds with output_router_logits.
    pooled = RouterLosses(model, aux_coef=0.5, z_coef=0.0, scope="pooled")
    pooled.wrap(objective).loss(model, {"input_ids": ids}, None)
    assert pooled.last["moe_aux_loss"] == pytest.approx(reference.aux_loss.item(), rel=1e-5)
    # The gradient reaches the routers through the balancing term.
    parts.loss_sum.backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in routers(model))
    metrics = wrapper.metrics()
    assert set(metrics) >= {"moe_aux_loss", "moe_z_loss", "moe_load/L0", "moe_load/L1", "moe_load_max"}
    assert all(1.0 <= metrics[f"moe_load/L{i}"] <= experts for i in range(2))
    assert "moe_load/L0" not in wrapper.metrics()  # counts restart after each metrics line


def test_padding_is_left_out_of_the_load(moe_dirs) -> None:
    model = AutoModelForCausalLM.from_pretrained(moe_dirs["mixtral"]).train()
    wrapper = RouterLosses(model, aux_coef=0.01, z_coef=0.0)
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # 6 padding positions

    def loss(m, batch, ctx) -> LossParts:
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return LossParts(out.logits.float().mean() * 0, torch.tensor(1.0))

    objective = dataclasses.replace(SFT, loss=loss)
    wrapper.wrap(objective).loss(model, {"input_ids": ids, "attention_mask": mask}, None)
    assert wrapper.counts.sum(dim=1).tolist() == [14 * wrapper.top_k] * 2  # 14 real tokens, top-k each


def test_a_run_logs_routing_and_lora_reaches_the_experts(moe_dirs, tmp_path: Path) -> None:
    source = moe_dirs["mixtral"]
    cfg = tiny_config(tmp_path, source, "method=lora", "method.r=4", "method.target_experts=true",
                      "training.router_z_loss_coef=0.001", "training.log_every=1",
                      "training.epochs=1", "eval.generate=false", "eval.baseline=false")  # fmt: skip
    run = run_training(cfg)
    lines = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x and "moe_aux_loss" in x]
    assert steps and all("moe_load/L0" in x and "moe_z_loss" in x for x in steps)
    adapter = run.run_dir / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert {"experts.down_proj", "experts.gate_up_proj"} <= set(saved["target_parameters"])
    base = AutoModelForCausalLM.from_pretrained(source)
    loaded = PeftModel.from_pretrained(base, str(adapter))  # peft itself reads it back
    names = [n for n, _ in loaded.named_parameters() if "lora_" in n]
    assert any("experts" in n for n in names) and any("self_attn" in n for n in names)
    merged_dir = save_merged(str(run.run_dir), tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert expert_parameters(merged) == ["experts.down_proj", "experts.gate_up_proj"]  # structure kept
    ids = torch.tensor([[5, 9, 14, 20, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, loaded.merge_and_unload()(ids).logits, atol=1e-4)


def test_router_options_on_a_dense_model_and_experts_on_a_dense_model_are_errors(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert router_losses(dense, None, 0.0) is None  # nothing to do, nothing said
    with pytest.raises(ConfigError, match="router_aux_loss_coef / router_z_loss_coef apply to mixture-of-experts"):
        router_losses(dense, 0.01, 0.0)
    cfg = tiny_config(tmp_path, tiny_model_dir, "method=lora", "method.target_experts=true")
    with pytest.raises(ConfigError, match=r"method\.target_experts: .* has no experts"):
        run_training(cfg)
