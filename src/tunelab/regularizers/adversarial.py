"""Embedding-space adversarial training: FGM, PGD, FreeLB and the SMART smoothness penalty, around any objective.

A perturbation δ is added to the input embeddings (a forward hook on the embedding layer, real tokens only, and
only while gradients are on, so a reference model run under no_grad sees clean inputs). Each method finds δ by
gradient ascent on the loss (`torch.autograd.grad` with respect to δ only, no parameter gradients) and returns
one loss for the loop's single backward:
- fgm:    L(e) + w · L(e + ε ĝ),  ĝ the per-token unit gradient (Miyato et al., 2017)
- pgd:    L(e) + w · L(e + δ_K),  δ_k = Π_ε(δ_{k-1} + α ĝ_k), K steps from a small random start (Madry et al., 2018)
- freelb: (1/K) Σ_k L(e + δ_{k-1}), the same ascent, the loss averaged over its path (Zhu et al., 2020)
- smart:  L(e) + λ · ℓ_s(f(e + δ), f(e)), δ maximising the symmetric KL ℓ_s between the outputs on clean and
          perturbed inputs (Jiang et al., 2020; squared error for a scalar head)
ε bounds each token's perturbation (L2 norm per token). FreeLB keeps the graphs of its K forward passes until the
loop's backward: K times the activation memory of one pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from tunelab.core.types import Batch, LossParts
from tunelab.models.parts import input_embeddings, output_head
from tunelab.objectives.base import Objective
from tunelab.regularizers.config import AdversarialSection

LossFn = Callable[[nn.Module, Batch, Any], LossParts]


@dataclasses.dataclass(frozen=True)
class Adversarial:
    """`training.adversarial` as a loss wrapper: the training loss adds the configured adversarial term
    (validation stays clean). `output_layer` is the layer whose outputs SMART compares (the objective's head;
    None: the model's language-model head)."""

    cfg: AdversarialSection
    output_layer: nn.Module | None = None

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        inner, method = objective.loss, METHODS[self.cfg.method]

        def loss(model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
            if not (model.training and torch.is_grad_enabled()):
                return inner(model, batch, ctx)
            return method(inner, self, model, batch, ctx)

        # The perturbation is normalised over the whole micro-batch: its pieces would each get a different one.
        return dataclasses.replace(objective, loss=loss, row_independent=False)


class Perturbation:
    """Adds `delta` to the embedding layer's output while `enabled`. `delta` starts as None and is created on the
    first perturbed forward, when its shape and dtype are known: Gaussian noise of `init_std` (zeros for 0)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor, init_std: float = 0.0, enabled: bool = True) -> None:
        self.embeddings = input_embeddings(model)
        self.mask = mask.unsqueeze(-1)
        self.init_std = init_std
        self.enabled = enabled
        self.delta: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and torch.is_grad_enabled()):
            return output
        if self.delta is None:
            self.delta = (torch.randn_like(output) * self.init_std).requires_grad_()
        return output + self.delta * self.mask.to(output.dtype)

    @contextlib.contextmanager
    def active(self) -> Iterator[Perturbation]:
        handle = self.embeddings.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def ascend(self, loss: torch.Tensor, step: float, radius: float, retain_graph: bool = False) -> None:
        """δ ← Π_radius(δ + step · ĝ) with ĝ the per-token unit gradient of `loss` with respect to δ."""
        delta = self.delta
        assert delta is not None, "ascend after a perturbed forward (which creates delta)"
        (grad,) = torch.autograd.grad(loss, delta, retain_graph=retain_graph)
        moved = delta.detach() + step * grad / (grad.norm(dim=-1, keepdim=True) + 1e-12)
        scale = (radius / (moved.norm(dim=-1, keepdim=True) + 1e-12)).clamp(max=1.0)
        self.delta = (moved * scale).requires_grad_()


def fgm(loss_fn: LossFn, adv: Adversarial, model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
    cfg = adv.cfg
    p = Perturbation(model, batch["attention_mask"])  # δ = 0 on the clean pass: its gradient is ∂L/∂e
    with p.active():
        clean = loss_fn(model, batch, ctx)
        p.ascend(clean.loss_sum, cfg.epsilon, cfg.epsilon, retain_graph=True)
        perturbed = loss_fn(model, batch, ctx)
    return dataclasses.replace(clean, loss_sum=clean.loss_sum + cfg.weight * perturbed.loss_sum)


def pgd(loss_fn: LossFn, adv: Adversarial, model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
    cfg = adv.cfg
    p = Perturbation(model, batch["attention_mask"], cfg.init_std, enabled=False)
    with p.active():
        clean = loss_fn(model, batch, ctx)
        p.enabled = True
        for _ in range(cfg.steps):
            p.ascend(loss_fn(model, batch, ctx).loss_sum, cfg.alpha, cfg.epsilon)
        perturbed = loss_fn(model, batch, ctx)
    return dataclasses.replace(clean, loss_sum=clean.loss_sum + cfg.weight * perturbed.loss_sum)


def freelb(loss_fn: LossFn, adv: Adversarial, model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
    cfg = adv.cfg
    p = Perturbation(model, batch["attention_mask"], cfg.init_std)
    with p.active():
        path = []
        for k in range(cfg.steps):
            path.append(loss_fn(model, batch, ctx))
            if k < cfg.steps - 1:  # the graph stays for the loop's backward
                p.ascend(path[-1].loss_sum, cfg.alpha, cfg.epsilon, retain_graph=True)
    total = torch.stack([parts.loss_sum for parts in path]).mean()
    return dataclasses.replace(path[0], loss_sum=total)


def smart(loss_fn: LossFn, adv: Adversarial, model: nn.Module, batch: Batch, ctx: Any) -> LossParts:
    cfg = adv.cfg
    p = Perturbation(model, batch["attention_mask"], cfg.init_std, enabled=False)
    outputs: list[torch.Tensor] = []
    layer = adv.output_layer if adv.output_layer is not None else output_head(model)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no output layer for SMART to compare")

    def keep_output(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        outputs.append(out)

    handle = layer.register_forward_hook(keep_output)
    try:
        with p.active():
            clean = loss_fn(model, batch, ctx)
            clean_out = outputs[-1]
            p.enabled = True
            for _ in range(cfg.steps):
                loss_fn(model, batch, ctx)
                p.ascend(smoothness(outputs[-1], clean_out.detach()), cfg.alpha, cfg.epsilon)
            loss_fn(model, batch, ctx)
            penalty = smoothness(outputs[-1], clean_out)
    finally:
        handle.remove()
    return dataclasses.replace(clean, loss_sum=clean.loss_sum + cfg.weight * penalty)


def smoothness(perturbed: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Σ over rows of the symmetric KL between softmax outputs (squared error for one output per row)."""
    perturbed, clean = perturbed.float(), clean.float()
    if perturbed.size(-1) == 1:
        return (perturbed - clean).pow(2).sum()
    p, q = perturbed.log_softmax(-1), clean.log_softmax(-1)
    return ((p.exp() - q.exp()) * (p - q)).sum()  # KL(p‖q) + KL(q‖p) = Σ (p - q)(log p - log q)


METHODS = {"fgm": fgm, "pgd": pgd, "freelb": freelb, "smart": smart}
