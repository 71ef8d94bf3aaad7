"""Adversarial training: each method's loss on a toy whose loss is linear in the embeddings (so every ascent step
is known in closed form), then each method through the loop on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import tiny_config
from tunelab.core.types import LossParts
from tunelab.objectives.base import Objective, ObjectiveSection
from tunelab.recipes.run import run_training
from tunelab.regularizers.adversarial import Adversarial, Perturbation, smoothness
from tunelab.regularizers.config import AdversarialSection

W = torch.tensor([3.0, 4.0])  # ‖w‖ = 5, so a unit step along the gradient raises the loss by 5 per token


class Toy(nn.Module):
    """Embeddings of width 2 and a loss w·e summed over real tokens (gradient w at every token)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 2)
        self.head = nn.Linear(2, 3)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed


def adversarial(cfg: AdversarialSection, model: Toy | None = None) -> Objective:
    """The toy objective under the wrapper; SMART compares the outputs of the toy's head (the objective's setup
    would name it)."""
    return Adversarial(cfg, model.head if model is not None else None).wrap(
        Objective("toy", toy_loss, ObjectiveSection)
    )


def toy_loss(model: Toy, batch: dict[str, torch.Tensor], ctx: object = None) -> LossParts:
    e = model.embed(batch["input_ids"])
    model.head(e)  # the output SMART compares
    loss = (e @ W * batch["attention_mask"]).sum()
    return LossParts(loss_sum=loss, count=batch["attention_mask"].sum())


BATCH = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.tensor([[1, 1, 0]])}


def _adversarial_loss(method: str, **settings: float) -> tuple[float, float]:
    torch.manual_seed(0)
    model = Toy().train()
    clean = toy_loss(model, BATCH).loss_sum.item()
    objective = adversarial(AdversarialSection(method=method, **settings))
    return clean, objective.loss(model, BATCH, None).loss_sum.item()


def test_fgm_adds_the_loss_at_one_full_step_along_the_gradient() -> None:
    # δ = ε ŵ on each of the 2 real tokens: L(e + δ) = L(e) + 2 · ε · ‖w‖ = L(e) + 2 · 0.5 · 5.
    clean, total = _adversarial_loss("fgm", epsilon=0.5, weight=1.0)
    assert total == pytest.approx(clean + (clean + 5.0), abs=1e-5)


def test_pgd_steps_are_projected_onto_the_epsilon_ball() -> None:
    # From δ = 0: 0.3ŵ, then 0.6ŵ projected back to 0.5ŵ. The adversarial loss is L(e) + 2 · 0.5 · 5, weighted 0.5.
    clean, total = _adversarial_loss("pgd", epsilon=0.5, alpha=0.3, steps=2, weight=0.5, init_std=0.0)
    assert total == pytest.approx(clean + 0.5 * (clean + 5.0), abs=1e-5)


def test_freelb_averages_the_loss_over_its_ascent_path() -> None:
    # Path δ = 0, 0.3ŵ, 0.6ŵ (inside ε = 1): losses L, L + 3, L + 6 over 2 tokens; their mean is L + 3.
    clean, total = _adversarial_loss("freelb", epsilon=1.0, alpha=0.3, steps=3, init_std=0.0)
    assert total == pytest.approx(clean + 3.0, abs=1e-5)


def test_smart_is_zero_for_a_model_whose_outputs_ignore_the_perturbation() -> None:
    torch.manual_seed(0)
    model = Toy().train()
    with torch.no_grad():
        model.head.weight.zero_()  # outputs are the bias only: no perturbation can change them
    objective = adversarial(AdversarialSection(method="smart", weight=10.0), model)
    clean = toy_loss(model, BATCH).loss_sum
    torch.testing.assert_close(objective.loss(model, BATCH, None).loss_sum, clean)


def test_smoothness_is_the_symmetric_kl() -> None:
    # KL(S‖T) + KL(T‖S) for p_S = (0.5, 0.5), p_T = (0.75, 0.25): 0.1438410 + 0.1308120
    value = smoothness(torch.tensor([[0.0, 0.0]]), torch.log(torch.tensor([[3.0, 1.0]])))
    assert value.item() == pytest.approx(0.2746530, abs=1e-6)
    assert smoothness(torch.tensor([[1.5]]), torch.tensor([[0.5]])).item() == pytest.approx(1.0)


def test_perturbation_skips_padding_and_stays_within_epsilon_per_token() -> None:
    model = Toy()
    p = Perturbation(model, BATCH["attention_mask"], init_std=0.0)
    with p.active():
        loss = toy_loss(model, BATCH).loss_sum
        p.ascend(loss, step=2.0, radius=0.7)
        perturbed = model.embed(BATCH["input_ids"]) - model.embed.weight[BATCH["input_ids"]]
    norms = perturbed.norm(dim=-1)[0]
    torch.testing.assert_close(norms, torch.tensor([0.7, 0.7, 0.0]))
    with torch.no_grad():  # no gradients, no perturbation (a reference model run under no_grad sees clean inputs)
        assert torch.equal(model.embed(BATCH["input_ids"]), model.embed.weight[BATCH["input_ids"]])


def test_validation_is_clean() -> None:
    model = Toy().eval()
    objective = adversarial(AdversarialSection(method="fgm", epsilon=0.5))
    assert objective.loss(model, BATCH, None).loss_sum.item() == pytest.approx(toy_loss(model, BATCH).loss_sum.item())


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb", "smart"])
def test_each_method_trains_the_tiny_model(tmp_path: Path, tiny_model_dir: Path, method: str) -> None:
    cfg = tiny_config(
        tmp_path, tiny_model_dir, f"training.adversarial.method={method}", "training.adversarial.epsilon=0.05",
        "training.adversarial.alpha=0.02", "training.max_steps=10", "eval.generate=false", name=method,
    )  # fmt: skip
    result = run_training(cfg)
    assert result.final["val_loss"] < result.baseline["val_loss"] - 0.3
