"""Every preference and distillation loss against numbers worked out by hand from its paper's formula.

Shared inputs: log π(y_w|x) = -5, log π(y_l|x) = -7, log π_ref(y_w|x) = log π_ref(y_l|x) = -6, so the DPO margin is
h = (−5+6) − (−7+6) = 2, and with β = 0.5, βh = 1. Values used below: −log σ(1) = log(1 + e⁻¹) = 0.3132617,
−log σ(−1) = log(1 + e) = 1.3132617.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.objectives.distill.losses import distill_terms, divergence, kl
from tunelab.objectives.dpo import dpo_losses
from tunelab.objectives.kto import kto_losses
from tunelab.objectives.orpo import log1mexp, orpo_losses
from tunelab.objectives.reward import bradley_terry_losses

T = torch.tensor
CHOSEN, REJECTED, REF = T([-5.0]), T([-7.0]), T([-6.0])


def test_dpo_sigmoid_is_minus_log_sigmoid_of_beta_times_margin() -> None:
    assert dpo_losses(CHOSEN, REJECTED, REF, REF, beta=0.5).item() == pytest.approx(0.3132617, abs=1e-6)


def test_dpo_label_smoothing_is_conservative_dpo() -> None:
    # cDPO: 0.9 · 0.3132617 + 0.1 · 1.3132617
    loss = dpo_losses(CHOSEN, REJECTED, REF, REF, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.4132617, abs=1e-6)


def test_robust_dpo() -> None:
    # rDPO: (0.9 · 0.3132617 − 0.1 · 1.3132617) / (1 − 0.2)
    loss = dpo_losses(CHOSEN, REJECTED, REF, REF, beta=0.5, loss_type="robust", label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.1882617, abs=1e-6)


def test_ipo_uses_token_averaged_log_ratios() -> None:
    # chosen ratio 1 over 2 tokens, rejected ratio −1 over 4 tokens: h' = 0.5 + 0.25 = 0.75; 1/(2β) = 1.
    loss = dpo_losses(CHOSEN, REJECTED, REF, REF, 0.5, "ipo", chosen_tokens=T([2]), rejected_tokens=T([4]))
    assert loss.item() == pytest.approx((0.75 - 1.0) ** 2, abs=1e-7)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen, rejected = CHOSEN.clone().requires_grad_(), REJECTED.clone().requires_grad_()
    dpo_losses(chosen, rejected, REF, REF, beta=0.5).sum().backward()
    # d/dchosen −log σ(β h) = −β (1 − σ(βh)) = −0.5 · (1 − 0.7310586)
    assert chosen.grad.item() == pytest.approx(-0.5 * (1 - 0.7310586), abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.5 * (1 - 0.7310586), abs=1e-6)


def test_orpo_is_nll_minus_lambda_log_sigmoid_log_odds_ratio() -> None:
    # a_w = −0.5, a_l = −1: log odds = a − log(1 − eᵃ): 0.4327524 and −0.5413249, ratio 0.9740770.
    # L = 0.5 − 0.1 · log σ(0.9740770) = 0.5 + 0.1 · 0.3202998
    assert orpo_losses(T([-0.5]), T([-1.0]), beta=0.1).item() == pytest.approx(0.5320300, abs=1e-6)


def test_log1mexp_is_accurate_near_zero_and_far_below() -> None:
    x = T([-1e-7, -0.1, -50.0], dtype=torch.float64)
    expected = [math.log(-math.expm1(-1e-7)), math.log(1 - math.exp(-0.1)), math.log1p(-math.exp(-50.0))]
    torch.testing.assert_close(log1mexp(x), T(expected, dtype=torch.float64))


def test_kto_desirable_and_undesirable_terms() -> None:
    # Mismatched answers: ratios 0.5 and 0.5, so z0 = 0.5. β = 0.5.
    # desirable, r = 1:            1 − σ(0.5 · (1 − 0.5)) = 1 − σ(0.25) = 0.4378235
    # undesirable, r = −1, λ_U = 2: 2 · (1 − σ(0.5 · (0.5 + 1))) = 2 · (1 − σ(0.75)) = 0.6416426
    losses = kto_losses(
        logps=T([-4.0, -7.0]), ref_logps=T([-5.0, -6.0]), kl_logps=T([-3.0, -4.0]), ref_kl_logps=T([-3.5, -4.5]),
        desirable=T([True, False]), beta=0.5, undesirable_weight=2.0,
    )  # fmt: skip
    torch.testing.assert_close(losses, T([0.4378235, 0.6416426]))


def test_kto_kl_estimate_is_clamped_at_zero() -> None:
    # Mismatched ratios −1 and −2 would give z0 = −1.5; it is clamped to 0: 1 − σ(0.5 · 1).
    losses = kto_losses(T([-4.0]), T([-5.0]), T([-5.0, -6.0]), T([-4.0, -4.0]), T([True]), beta=0.5)
    assert losses.item() == pytest.approx(1 - 1 / (1 + math.exp(-0.5)), abs=1e-6)


def test_bradley_terry_with_centering() -> None:
    # −log σ(1.5 − 0.5) + 0.01 · (1.5 + 0.5)²
    assert bradley_terry_losses(T([1.5]), T([0.5]), center=0.01).item() == pytest.approx(0.3532617, abs=1e-6)


# Distillation on a two-token vocabulary: p_T = (0.75, 0.25) from logits (log 3, 0), p_S = (0.5, 0.5) from (0, 0).
#   KL(T‖S) = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.1308120;  KL(S‖T) = 0.5 ln(2/3) + 0.5 ln 2 = 0.1438410
#   JSD_0.5: M = (0.625, 0.375): 0.5 · KL(T‖M) + 0.5 · KL(S‖M) = 0.5 · 0.0353749 + 0.5 · 0.0322693 = 0.0338221
TEACHER, STUDENT = T([[math.log(3.0), 0.0]]), T([[0.0, 0.0]])


@pytest.mark.parametrize(
    ("kind", "beta", "expected"),
    [("forward_kl", 0.5, 0.1308120), ("reverse_kl", 0.5, 0.1438410), ("jsd", 0.5, 0.0338221), ("jsd", 0.25, 0.0248700)],
)
def test_divergences_by_hand(kind: str, beta: float, expected: float) -> None:
    assert distill_terms(STUDENT, TEACHER, kind, beta=beta).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_softens_both_and_scales_by_its_square() -> None:
    # Teacher logits (2 ln 3, 0) at τ = 2 soften to (ln 3, 0): τ² · KL(T‖S) = 4 · 0.1308120.
    loss = distill_terms(STUDENT, TEACHER * 2, "forward_kl", temperature=2.0)
    assert loss.item() == pytest.approx(0.5232481, abs=1e-6)


def test_topk_with_every_token_equals_full_vocabulary() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    ids = torch.arange(7).expand(5, 7)
    cached = teacher.log_softmax(-1)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        full = distill_terms(student, teacher, kind, temperature=1.5)
        topk = distill_terms(student, (ids, cached), kind, temperature=1.5)
        torch.testing.assert_close(topk, full)


def test_topk_renormalises_over_the_kept_tokens() -> None:
    # Teacher over 3 tokens (0.5, 0.3, 0.2), top-2 kept → (0.625, 0.375); student logits (0, 0, 5) → on the
    # kept tokens (0.5, 0.5). Forward KL = 0.625 ln 1.25 + 0.375 ln 0.75.
    ids, cached = T([[0, 1]]), T([[math.log(0.5), math.log(0.3)]])
    loss = distill_terms(T([[0.0, 0.0, 5.0]]), (ids, cached), "forward_kl")
    assert loss.item() == pytest.approx(0.625 * math.log(1.25) + 0.375 * math.log(0.75), abs=1e-6)


def test_kl_counts_zero_probability_as_zero() -> None:
    p = T([[0.0, -float("inf")]])  # all mass on the first token
    assert kl(p, T([[math.log(0.5), math.log(0.5)]])).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        divergence(p, p, "jsd", beta=1.0)
