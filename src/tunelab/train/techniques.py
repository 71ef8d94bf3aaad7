"""A run's regularizers, built from the `training` section: what the loop adds to the objective.

- loss wrappers, innermost first: NEFTune (`neftune_alpha`), adversarial training (`adversarial`), task weighting
  (`task_weights`, `task_weighting`; a trained technique when its weights are learned);
- penalties, added once per optimizer step: L1/L2 on the weights or on ΔW (`l1_penalty`, `l2_penalty`), EWC
  (`ewc_state`, `ewc_lambda`);
- mixture-of-experts routing terms (`router_aux_loss_coef`, `router_z_loss_coef`), a wrapper put on every MoE
  model, which also logs expert utilisation (`tunelab.regularizers.moe`);
- and `dropout`, set on the model once (see `tunelab.regularizers.dropout` for why it is not a wrapper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tunelab.objectives.base import Objective
from tunelab.regularizers.adversarial import Adversarial
from tunelab.regularizers.base import LossWrapper, Penalty, Reporting, TrainedTechnique
from tunelab.regularizers.dropout import set_dropout_
from tunelab.regularizers.ewc import EWCPenalty
from tunelab.regularizers.l1l2 import DeltaPenalty
from tunelab.regularizers.moe import router_losses
from tunelab.regularizers.neftune import NEFTune
from tunelab.regularizers.task_weighting import TaskWeighting
from tunelab.train.config import TrainingSection


@dataclass
class Techniques:
    """The loss wrappers, penalties and trained techniques of one run."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the penalties are summed."""
    wrappers: list[LossWrapper] = field(default_factory=list)
    penalties: list[Penalty] = field(default_factory=list)
    trained: dict[str, TrainedTechnique] = field(default_factory=dict)
    reporting: list[Reporting] = field(default_factory=list)
    """Wrappers that also log numbers of their own (in `wrappers` too)."""

    def wrap(self, objective: Objective[Any, Any]) -> Objective[Any, Any]:
        """`objective` under every wrapper, the first innermost (a trained technique wraps outermost)."""
        for wrapper in [*self.wrappers, *self.trained.values()]:
            objective = wrapper.wrap(objective)
        return objective

    def penalty(self) -> torch.Tensor:
        """The penalties' sum for one optimizer step (zero without penalties)."""
        total = torch.zeros((), device=self.device)
        for term in self.penalties:
            total = total + term.penalty()
        return total

    def metrics(self) -> dict[str, float]:
        """What the metrics line logs of the techniques: learned weights, routing terms and expert load."""
        reporters: list[Reporting] = [*self.trained.values(), *self.reporting]
        return {k: v for technique in reporters for k, v in technique.metrics().items()}

    def state(self) -> dict[str, Any]:
        return {k: v for technique in self.trained.values() for k, v in technique.state().items()}

    def restore(self, state: dict[str, Any]) -> None:
        for technique in self.trained.values():
            technique.restore(state)


def build_techniques(
    model: nn.Module,
    cfg: TrainingSection,
    train: Sequence[Any] = (),
    *,
    head: nn.Module | None = None,
    trainable: Sequence[nn.Parameter] | None = None,
) -> Techniques:
    """The regularizers `cfg` asks for, for `model` trained on `train` (whose task tags task weighting reads).
    `head` is the objective's output layer (SMART compares its outputs); `trainable` are the tensors the optimizer
    holds (default: the model's trainable parameters). Build before restoring a checkpoint: the ΔW penalties
    measure the change from the model as the method set it up."""
    if cfg.dropout is not None:
        set_dropout_(model, cfg.dropout)
    device = next(model.parameters()).device
    out = Techniques(device)
    if cfg.neftune_alpha is not None:
        out.wrappers.append(NEFTune(cfg.neftune_alpha))
    if cfg.adversarial is not None:
        out.wrappers.append(Adversarial(cfg.adversarial, head))
    routing = router_losses(model, cfg.router_aux_loss_coef, cfg.router_z_loss_coef, cfg.router_aux_loss_scope)
    if routing is not None:
        out.wrappers.append(routing)
        out.reporting.append(routing)
    if cfg.task_weights or cfg.task_weighting != "fixed":
        out.trained["task_weighting"] = TaskWeighting(cfg.task_weights, cfg.task_weighting, list(train), device)
    if cfg.l1_penalty or cfg.l2_penalty:
        params = list(trainable) if trainable is not None else [p for p in model.parameters() if p.requires_grad]
        out.penalties.append(DeltaPenalty(model, cfg.l1_penalty, cfg.l2_penalty, cfg.penalty_on, _unique(params)))
    if cfg.ewc_state is not None:  # continual learning: a pull back towards the weights of earlier tasks
        out.penalties.append(EWCPenalty.from_file(model, cfg.ewc_state, cfg.ewc_lambda))
    return out


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Tied weights once."""
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]
