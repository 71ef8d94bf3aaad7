"""Merging maths on small tensors against hand-computed values (TIES, DARE, task arithmetic, linear)."""

from __future__ import annotations

import pytest
import torch

from tunelab.core.errors import ConfigError
from tunelab.export.merging.config import parse_merge_config
from tunelab.export.merging.tensors import (
    MERGE_METHODS,
    linear_merge,
    magnitude_prune,
    merge_deltas,
    random_prune,
    tensor_generator,
)

D1 = torch.tensor([0.5, -1.0, 0.2, 0.0, 2.0, -0.3])
D2 = torch.tensor([-0.4, 0.8, 0.1, 0.6, -1.5, -0.2])
D3 = torch.tensor([0.3, 0.6, -0.9, 0.2, 1.0, 0.7])


def _ties(weights: list[float], **kw) -> torch.Tensor:
    return merge_deltas(MERGE_METHODS["ties"], [D1, D2, D3], weights, [0.5] * 3, **kw)


def test_magnitude_prune_keeps_the_largest_half() -> None:
    # density 0.5 of 6 entries keeps 3: δ1's |2.0|, |-1.0|, |0.5|.
    assert magnitude_prune(D1, 0.5).tolist() == [0.5, -1.0, 0.0, 0.0, 2.0, 0.0]
    assert magnitude_prune(D2, 0.5).tolist() == pytest.approx([0.0, 0.8, 0.0, 0.6, -1.5, 0.0])
    assert magnitude_prune(D3, 0.5).tolist() == pytest.approx([0.0, 0.0, -0.9, 0.0, 1.0, 0.7])
    assert magnitude_prune(D1, 0.1).count_nonzero() == 1, "int(0.6) = 0 entries would be kept: one is kept instead"
    assert magnitude_prune(D1, 1.0) is D1


def test_ties_by_hand_equal_weights() -> None:
    # Trimmed: t1 = [.5,-1,0,0,2,0], t2 = [0,.8,0,.6,-1.5,0], t3 = [0,0,-.9,0,1,.7].
    # Elected signs (sign of the sum): [+, -(-0.2), -, +, +(1.5), +]. Disjoint mean of the agreeing entries:
    # i1 keeps only -1.0 (t2's 0.8 disagrees); i4 keeps 2.0 and 1.0 -> 1.5.
    assert _ties([1, 1, 1], normalize=True).tolist() == pytest.approx([0.5, -1.0, -0.9, 0.6, 1.5, 0.7])


def test_ties_by_hand_weighted_and_tie_goes_positive() -> None:
    # Weights [1, 2, 1]: weighted t2 = [0, 1.6, 0, 1.2, -3.0, 0]. i1: -1.0 + 1.6 > 0, so now t2 wins: 1.6 / 2.
    # i4: 2.0 - 3.0 + 1.0 = 0 counts as +: (2.0 + 1.0) / (1 + 1). mergekit divides by the kept *weights*.
    expected = [0.5, 0.8, -0.9, 0.6, 1.5, 0.7]
    assert _ties([1, 2, 1], normalize=True).tolist() == pytest.approx(expected)
    assert _ties([1, 2, 1], normalize=False).tolist() == pytest.approx([0.5, 1.6, -0.9, 1.2, 3.0, 0.7])
    assert _ties([1, 2, 1], normalize=True, lam=0.5).tolist() == pytest.approx([x / 2 for x in expected])


def test_task_arithmetic_and_linear_by_hand() -> None:
    ta = merge_deltas(MERGE_METHODS["task_arithmetic"], [D1, D2], [1.0, 0.5], [1, 1], normalize=False, lam=2.0)
    assert ta.tolist() == pytest.approx((2 * (D1 + 0.5 * D2)).tolist())
    normalized = merge_deltas(MERGE_METHODS["task_arithmetic"], [D1, D2], [1.0, 3.0], [1, 1], normalize=True)
    assert normalized.tolist() == pytest.approx(((D1 + 3 * D2) / 4).tolist())
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])
    assert linear_merge([a, b], [1.0, 3.0], normalize=True).tolist() == [[2.5, 5.0]]
    assert linear_merge([a, b], [1.0, 3.0], normalize=False).tolist() == [[10.0, 20.0]]


def test_dare_drop_rescales_to_the_l1_norm_and_is_seeded() -> None:
    delta = torch.arange(1.0, 101.0) * torch.tensor([1.0, -1.0]).repeat(50)
    kept = random_prune(delta, 0.3, tensor_generator(0, "w", 0), rescale=True)
    mask = kept != 0
    assert 15 <= int(mask.sum()) <= 45, "about 30 of 100 kept"
    assert kept.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    ratio = kept[mask] / delta[mask]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio)), "one common factor, signs kept"
    again = random_prune(delta, 0.3, tensor_generator(0, "w", 0), rescale=True)
    assert torch.equal(kept, again)
    other = random_prune(delta, 0.3, tensor_generator(0, "w", 1), rescale=True)
    assert not torch.equal(kept, other), "each model draws its own mask"
    plain = random_prune(delta, 0.3, tensor_generator(0, "w", 0), rescale=False)
    assert torch.equal(plain, delta * mask)


def test_dare_keep_rate_and_unbiased_mean() -> None:
    delta = torch.ones(20000)
    kept = random_prune(delta, 0.25, tensor_generator(3, "big", 0), rescale=True)
    # Binomial(20000, 0.25): sd 61, so 5000 ± 300 holds with a fixed seed and fails for a wrong rate.
    assert abs(int((kept != 0).sum()) - 5000) < 300
    assert kept.sum().item() == pytest.approx(20000, rel=1e-5)


def test_dare_methods_at_density_one_are_ties_without_trim_and_task_arithmetic() -> None:
    gens = [tensor_generator(0, "x", i) for i in range(3)]
    dare_ties = merge_deltas(
        MERGE_METHODS["dare_ties"], [D1, D2, D3], [1, 1, 1], [1, 1, 1], normalize=True, generators=gens
    )
    # No trimming: signs of the sums [+0.4, +0.4, -0.6, +0.8, +1.5, +0.2]; i0 keeps 0.5 and 0.3 -> 0.4;
    # i1 keeps 0.8 and 0.6 -> 0.7; i2 keeps -0.9 -> -0.9; i3 keeps 0.6, 0.2 -> 0.4 (0.0 never agrees);
    # i4 keeps 2.0, 1.0 -> 1.5; i5: -0.3 - 0.2 + 0.7 = 0.2 -> +, keeps 0.7.
    assert dare_ties.tolist() == pytest.approx([0.4, 0.7, -0.9, 0.4, 1.5, 0.7])
    dare_linear = merge_deltas(MERGE_METHODS["dare_linear"], [D1, D2], [1, 1], [1, 1], normalize=False, generators=gens)
    assert dare_linear.tolist() == pytest.approx((D1 + D2).tolist())


def test_recipe_defaults_follow_mergekit() -> None:
    cfg = parse_merge_config({"merge_method": "ties", "models": [{"model": "a"}], "parameters": {"lambda": 0.7}})
    assert cfg.normalize() is True and cfg.parameters.lambda_ == 0.7
    dare = parse_merge_config(
        {
            "merge_method": "dare_ties",
            "models": [{"model": "a", "parameters": {"weight": 0.3}}],
            "parameters": {"density": 0.4},
        }
    )
    assert dare.normalize() is False and dare.rescale() is True
    assert dare.weight(dare.models[0]) == 0.3 and dare.density(dare.models[0]) == 0.4


def test_recipe_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'models.0.parameters.densty'.*Did you mean 'density'"):
        parse_merge_config({"merge_method": "ties", "models": [{"model": "a", "parameters": {"densty": 0.5}}]})
    with pytest.raises(ConfigError, match="Did you mean 'ties'"):
        parse_merge_config({"merge_method": "tie", "models": [{"model": "a"}]})
    with pytest.raises(ConfigError, match="density"):
        parse_merge_config({"merge_method": "ties", "models": [{"model": "a", "parameters": {"density": 1.5}}]})
