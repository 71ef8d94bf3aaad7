"""Regularisation: L1/L2 penalties on weights and on ΔW (LoRA, IA3, L2-SP) against hand-computed values,
NEFTune noise bounds, and the dropout override."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from tunelab.core.types import LossParts
from tunelab.methods.registry import METHOD_CONFIGS, METHODS
from tunelab.models.load import load_model
from tunelab.objectives.base import Objective, ObjectiveSection
from tunelab.regularizers.dropout import set_dropout_
from tunelab.train.config import TrainingSection
from tunelab.train.techniques import build_techniques


def _method(model_dir: Path, name: str, **fields) -> torch.nn.Module:
    return METHODS[name].apply_(load_model(str(model_dir)), METHOD_CONFIGS[name](**fields))


def _fill_lora_(model: torch.nn.Module, a: float, b: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.fill_(a)
            elif ".lora_B." in name:
                p.fill_(b)


def test_lora_delta_penalties_by_hand(tiny_model_dir: Path) -> None:
    model = _method(tiny_model_dir, "lora", r=4, alpha=8, target_modules=["q_proj"])
    assert build_techniques(model, TrainingSection(l2_penalty=1.0)).penalty().item() == 0.0, "B = 0: no change yet"
    _fill_lora_(model, a=0.1, b=0.2)
    # Each entry of ΔW = (alpha / r) * sum over r of b * a = 2 * 4 * 0.02 = 0.16; q_proj is 48 x 48 in 2 layers.
    entries = 2 * 48 * 48
    l2 = build_techniques(model, TrainingSection(l2_penalty=0.5)).penalty()
    assert l2.item() == pytest.approx(0.5 * entries * 0.16**2, rel=1e-5)
    l1 = build_techniques(model, TrainingSection(l1_penalty=0.1)).penalty()
    assert l1.item() == pytest.approx(0.1 * entries * 0.16, rel=1e-5)
    weights = build_techniques(model, TrainingSection(l1_penalty=1.0, penalty_on="weights")).penalty()
    assert weights.item() == pytest.approx(2 * (4 * 48 * 0.1 + 48 * 4 * 0.2), rel=1e-5), "|A| + |B| entries"
    l2.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_pissa_delta_is_measured_from_the_start(tiny_model_dir: Path) -> None:
    model = _method(tiny_model_dir, "lora", r=4, init="pissa", target_modules=["q_proj"])
    reg = build_techniques(model, TrainingSection(l2_penalty=1.0))
    assert reg.penalty().item() == pytest.approx(0.0, abs=1e-9), "PiSSA's B·A is part of the base, not a change"


def test_ia3_and_l2sp_deltas(tiny_model_dir: Path) -> None:
    model = _method(tiny_model_dir, "ia3")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.fill_(1.5)
    assert build_techniques(model, TrainingSection(l2_penalty=1.0)).penalty().item() == pytest.approx(288 * 0.25)

    model = _method(tiny_model_dir, "freeze", top_k_layers=1)
    reg = build_techniques(model, TrainingSection(l1_penalty=1.0, l2_penalty=1.0))
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.add_(0.1)
        model.model.layers[1].input_layernorm.weight.add_(-0.2)
    assert reg.penalty().item() == pytest.approx(48 * 48 * (0.1 + 0.01) + 48 * (0.2 + 0.04), rel=1e-4)
    norms_skipped = build_techniques(model, TrainingSection(l2_penalty=1.0, penalty_on="weights")).penalty()
    matrices = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2]
    assert norms_skipped.item() == pytest.approx(sum(float((p.detach() ** 2).sum()) for p in matrices), rel=1e-5)


def test_no_coefficients_no_cost(tiny_model_dir: Path) -> None:
    reg = build_techniques(_method(tiny_model_dir, "full"), TrainingSection())
    assert not reg.penalties and reg.penalty().item() == 0.0, "no copy of the weights is kept when unused"


def test_neftune_noise_only_in_training_and_bounded(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = model.get_input_embeddings()(ids)
    seen: list[torch.Tensor] = []

    def embeddings_only(model: torch.nn.Module, batch: dict, ctx: object) -> LossParts:
        seen.append(model.get_input_embeddings()(batch["input_ids"]))
        return LossParts(torch.zeros(()), torch.tensor(1))

    build_techniques(model, TrainingSection(neftune_alpha=5.0))  # building twice must not add noise twice
    wrapped = build_techniques(model, TrainingSection(neftune_alpha=5.0)).wrap(
        Objective("probe", embeddings_only, ObjectiveSection)
    )
    model.eval()
    wrapped.loss(model, {"input_ids": ids}, None)
    assert torch.equal(seen[-1], clean), "no noise in eval mode"
    model.train()
    wrapped.loss(model, {"input_ids": ids}, None)
    noise = seen[-1] - clean
    bound = 5.0 / (4 * 48) ** 0.5
    assert 0.5 * bound < noise.abs().max().item() <= bound
    assert torch.equal(model.get_input_embeddings()(ids), clean), "outside the loss the embeddings stay clean"


def test_dropout_override(tiny_model_dir: Path) -> None:
    llama = load_model(str(tiny_model_dir))
    set_dropout_(llama, 0.25)
    assert {layer.self_attn.attention_dropout for layer in llama.model.layers} == {0.25}
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))  # fmt: skip
    assert set_dropout_(bert, 0.0) > 0
    assert {m.p for m in bert.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    lora = _method(tiny_model_dir, "lora", r=4, dropout=0.1)
    set_dropout_(lora, 0.3)
    assert {m.p for n, m in lora.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n} == {0.1}
