"""Continual learning: EWC penalty and Fisher by hand, the reservoir's inclusion probabilities, replay mixing,
and the accuracy-matrix summaries."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from tunelab.core.errors import ConfigError, RunError
from tunelab.core.types import LossParts
from tunelab.recipes.continual.replay import ReservoirBuffer, mix_replay
from tunelab.recipes.continual.report import continual_report
from tunelab.regularizers.ewc import EWCPenalty, ewc_penalty
from tunelab.regularizers.fisher import EWCState, accumulate, anchor_of, estimate_fisher, load_ewc, save_ewc


class Line(nn.Module):
    """y ~ N(w·x + b, 1): the NLL is (y - w·x - b)² / 2, so per-example gradients are easy to do by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))
        self.b = nn.Parameter(torch.tensor(0.5))


def gaussian_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossParts:
    residual = batch["y"] - batch["x"] @ model.w - model.b
    return LossParts(loss_sum=0.5 * residual.pow(2).sum(), count=torch.tensor(residual.numel()))


def test_ewc_penalty_by_hand() -> None:
    model = Line()
    fisher = {"w": torch.tensor([2.0, 0.5]), "b": torch.tensor(4.0)}
    anchor = {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor(0.0)}
    # λ/2 · [2·(1-0)² + 0.5·(-1-1)² + 4·(0.5-0)²] = 0.5 · 3 · (2 + 2 + 1) = 7.5
    penalty = ewc_penalty(model, fisher, anchor, lam=3.0)
    assert penalty.item() == pytest.approx(7.5)
    penalty.backward()
    # ∂/∂w = λ F (w - w*) = 3·[2·1, 0.5·(-2)] = [6, -3]; ∂/∂b = 3·4·0.5 = 6
    assert model.w.grad.tolist() == pytest.approx([6.0, -3.0]) and model.b.grad.item() == pytest.approx(6.0)
    assert EWCPenalty(model, EWCState(fisher, anchor), 3.0).penalty().item() == pytest.approx(7.5)
    model.b.requires_grad_(False)
    assert ewc_penalty(model, fisher, anchor, lam=3.0).item() == pytest.approx(6.0), "frozen weights are not pulled"


def test_fisher_is_the_mean_of_per_example_squared_gradients() -> None:
    model = Line()
    # residuals r = y - w·x - b: example 1 (x=[1,0], y=2): r = 2-1-0.5 = 0.5;
    # example 2 (x=[0,2], y=0): r = 0+2-0.5 = 1.5
    batch = {"x": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "y": torch.tensor([2.0, 0.0])}
    fisher = estimate_fisher(model, [batch], loss_fn=gaussian_nll)
    # ∂NLL/∂w = -r·x, ∂NLL/∂b = -r: g1 = ([-0.5, 0], -0.5), g2 = ([0, -3], -1.5)
    assert fisher["w"].tolist() == pytest.approx([0.25 / 2, 9.0 / 2])
    assert fisher["b"].item() == pytest.approx((0.25 + 2.25) / 2)
    assert model.w.grad is None, "the model's .grad is left alone"
    assert estimate_fisher(model, [batch], loss_fn=gaussian_nll, max_examples=1)["w"].tolist() == pytest.approx(
        [0.25, 0]
    )


def test_fisher_of_a_tiny_llama_and_the_saved_state(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tunelab.models.load import load_model

    model = load_model(str(tiny_model_dir))
    for name, p in model.named_parameters():
        p.requires_grad_("layers.1.mlp" in name)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    fisher = estimate_fisher(model, [batch])
    assert set(fisher) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(bool((f >= 0).all()) and float(f.sum()) > 0 for f in fisher.values())
    state = EWCState(fisher, anchor_of(model), {"task": "a", "tasks": "1"})
    path = save_ewc(state, tmp_path)
    loaded = load_ewc(tmp_path)
    assert path.name == "ewc.safetensors" and loaded.meta == {"task": "a", "tasks": "1"}
    assert all(torch.equal(loaded.fisher[n], fisher[n]) for n in fisher)
    reg = EWCPenalty(model, loaded, lam=10.0)
    assert reg.penalty().item() == 0.0, "at the anchor"
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(0.1)
    assert reg.penalty().item() > 0
    with pytest.raises(RunError, match="No EWC state"):
        load_ewc(tmp_path / "missing")


def _fill_lora_(model: nn.Module, a: float, b: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.fill_(a)
            elif ".lora_B." in name:
                p.fill_(b)


def test_ewc_follows_effective_weights_across_a_merged_lora_stage(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from tunelab.models.load import load_model

    def lora(model: nn.Module) -> nn.Module:
        return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))

    stage1 = lora(load_model(str(tiny_model_dir)))
    _fill_lora_(stage1, 0.1, 0.05)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    fisher = estimate_fisher(stage1, [batch])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert name in fisher and fisher[name].shape == (48, 48), "LoRA layers are measured as W0 + ΔW, by plain name"
    assert not any("lora_" in n for n in fisher) and float(fisher[name].sum()) > 0
    base_weight = stage1.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not base_weight.requires_grad, "the frozen base weight is frozen again afterwards"
    anchor = anchor_of(stage1)
    # Stage 2: the stage-1 adapter merged into the base, a fresh adapter on top.
    stage2 = lora(stage1.merge_and_unload())
    state = EWCState({name: torch.full((48, 48), 2.0)}, {name: anchor[name]})
    reg = EWCPenalty(stage2, state, lam=0.5)
    assert reg.penalty().item() == pytest.approx(0.0, abs=1e-6), "B = 0: the merged weights are the anchor"
    _fill_lora_(stage2, 0.1, 0.2)
    # ΔW entries: (alpha / r) · Σ_r b·a = 2 · 4 · 0.02 = 0.16; penalty λ/2 · Σ F ΔW² = 0.25 · 2 · 48² · 0.16².
    assert reg.penalty().item() == pytest.approx(0.25 * 2 * 48 * 48 * 0.16**2, rel=1e-4)
    assert ewc_penalty(stage2, state.fisher, state.anchor, 0.5).item() == pytest.approx(reg.penalty().item())
    reg.penalty().backward()
    assert stage2.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad.abs().sum() > 0


def test_ewc_state_from_another_model_is_refused() -> None:
    state = EWCState({"other.weight": torch.ones(2)}, {"other.weight": torch.zeros(2)})
    with pytest.raises(ConfigError, match="names no weight this model trains"):
        EWCPenalty(Line(), state, 1.0)


def test_online_accumulation() -> None:
    a = EWCState({"w": torch.tensor([1.0, 2.0])}, {"w": torch.zeros(2)}, {"tasks": "1"})
    b = EWCState({"w": torch.tensor([3.0, 0.0])}, {"w": torch.ones(2)}, {"tasks": "1"})
    both = accumulate(a, b, decay=0.5)
    assert both.fisher["w"].tolist() == [3.5, 1.0] and both.anchor["w"].tolist() == [1.0, 1.0]
    assert both.meta["tasks"] == "2"


def _chi_square(counts: list[int], expected: float) -> float:
    return sum((c - expected) ** 2 / expected for c in counts)


def test_reservoir_keeps_every_item_with_probability_capacity_over_n() -> None:
    n, capacity, trials = 50, 10, 2000
    counts = [0] * n
    for trial in range(trials):
        buffer = ReservoirBuffer(capacity, seed=trial)
        buffer.extend(range(n))
        assert len(buffer) == capacity and buffer.seen == n
        for item in buffer.items:
            counts[item] += 1
    expected = trials * capacity / n  # 400 per item
    # 49 degrees of freedom: the 99.9% point of chi-square is 85.4. A correct sampler passes with this fixed seed
    # set; a biased one (below) lands far above.
    assert _chi_square(counts, expected) < 85.4
    assert abs(sum(counts[:10]) / (10 * trials) - capacity / n) < 0.02, "the first items are not over-kept"

    biased = [0] * n
    for trial in range(trials):  # a common bug: replace a random slot for every new item
        rng, items = random.Random(trial), list(range(capacity))
        for item in range(capacity, n):
            items[rng.randrange(capacity)] = item
        for item in items:
            biased[item] += 1
    assert _chi_square(biased, expected) > 1000


def test_reservoir_state_round_trips_through_json() -> None:
    a = ReservoirBuffer(5, seed=1)
    a.extend(range(20))
    b = ReservoirBuffer.from_state(json.loads(json.dumps(a.state_dict())))
    a.extend(range(20, 60))
    b.extend(range(20, 60))
    assert a.items == b.items and a.seen == b.seen == 60


def test_mix_replay_spreads_the_fraction_evenly() -> None:
    new = [f"n{i}" for i in range(8)]
    mixed = mix_replay(new, ["r0", "r1", "r2"], replay_fraction=0.2, seed=0)
    # 8 new items at 20% replay: 8 · 0.2 / 0.8 = 2 replay items, at slots int(0.5·10/2)=2 and int(1.5·10/2)=7.
    assert len(mixed) == 10 and [i for i, x in enumerate(mixed) if x.startswith("r")] == [2, 7]
    assert [x for x in mixed if x.startswith("n")] == new, "new items keep their order"
    many = mix_replay(new, ["r0", "r1"], replay_fraction=0.5, seed=0)
    replayed = [x for x in many if x.startswith("r")]
    assert len(replayed) == 8 and replayed.count("r0") == replayed.count("r1") == 4, "pool cycled evenly"
    assert mix_replay(new, [], 0.5) == new and mix_replay(new, ["r"], 0.0) == new


def test_accuracy_matrix_summaries_by_hand() -> None:
    matrix = [[0.9, 0.1, 0.2], [0.7, 0.8, 0.3], [0.6, 0.75, 0.85]]
    report = continual_report(["a", "b", "c"], matrix, baseline=[0.1, 0.05, 0.2])
    assert report.average_accuracy == pytest.approx((0.6 + 0.75 + 0.85) / 3)
    assert report.backward_transfer == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)  # -0.175
    # forgetting: task a max(0.9, 0.7) - 0.6 = 0.3; task b max(0.1, 0.8) - 0.75 = 0.05
    assert report.per_task_forgetting == pytest.approx([0.3, 0.05]) and report.forgetting == pytest.approx(0.175)
    assert report.forward_transfer == pytest.approx(((0.1 - 0.05) + (0.3 - 0.2)) / 2)
    text = report.to_markdown()
    assert "| 3: c | 60.0 | 75.0 | 85.0 |" in text and "backward transfer -17.5 pp" in text
    with pytest.raises(ValueError, match="3 x 3"):
        continual_report(["a", "b", "c"], matrix[:2])
