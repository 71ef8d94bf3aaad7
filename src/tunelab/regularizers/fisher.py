"""The diagonal Fisher information of a trained model on its task, the importance weights of EWC.

F_i = mean over examples n of (∂ log p(y_n | x_n) / ∂θ_i)²: the *empirical* Fisher, with the data's own labels
(Kirkpatrick et al. 2017 use it; sampling y from the model instead would cost a generation per example).
Gradients are taken one example at a time: squaring a batch-mean gradient would give (Σ g)² / B², which
underestimates the diagonal and depends on the batch size.

For a language model log p(y | x) is summed over the example's target tokens; `per="token"` divides it by their
number (the scale the training loss has, so `lambda` means the same for long and short answers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.core.errors import RunError
from tunelab.core.types import LossParts
from tunelab.objectives.lm import causal_lm_loss
from tunelab.regularizers.ewc_weights import ewc_weights

EWC_FILE = "ewc.safetensors"
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], LossParts]


@dataclass
class EWCState:
    """What EWC keeps from earlier tasks: the Fisher diagonal and the weights it was measured at (the anchor)."""

    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)


def estimate_fisher(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    loss_fn: LossFn = causal_lm_loss,
    per: Literal["token", "sequence"] = "token",
    max_examples: int | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the weights training can change (`weights.ewc_weights`: trainable parameters,
    LoRA-adapted layers as W0 + ΔW), by canonical name, over the examples in `batches`.

    `loss_fn` is an objective's loss (summed negative log-likelihood and its count, e.g. `causal_lm_loss`); every
    batch is split into single rows. The model runs in eval mode (no dropout); `.grad`s are not touched, and frozen
    base weights of LoRA layers get gradients only for the duration.
    """
    targets = ewc_weights(model)
    if not targets:
        raise ValueError("the model has no trainable weights to estimate a Fisher for")
    tensors = [t.grad_of for t in targets.values()]
    fisher = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in zip(targets, tensors, strict=True)}
    frozen = [t for t in tensors if not t.requires_grad]
    seen = 0
    was_training = model.training
    model.eval()
    for t in frozen:
        t.requires_grad_(True)
    try:
        for batch in batches:
            rows = next(iter(batch.values())).shape[0]
            for row in range(rows):
                if max_examples is not None and seen >= max_examples:
                    break
                example = {k: v[row : row + 1] for k, v in batch.items()}
                parts = loss_fn(model, example)
                if float(parts.count) == 0:
                    continue  # an example whose targets were all truncated away has no likelihood
                nll = parts.loss_sum / parts.count if per == "token" else parts.loss_sum
                grads = torch.autograd.grad(nll, tensors, allow_unused=True)
                for name, grad in zip(targets, grads, strict=True):
                    if grad is not None:
                        fisher[name] += grad.detach().float().pow(2)
                seen += 1
    finally:
        model.train(was_training)
        for t in frozen:
            t.requires_grad_(False)
    if seen == 0:
        raise ValueError("no example with targets reached estimate_fisher")
    return {name: f / seen for name, f in fisher.items()}


@torch.no_grad()
def anchor_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The effective weights as they are now (θ* of the finished task), by canonical name."""
    return {name: w.value().detach().float().clone() for name, w in ewc_weights(model).items()}


def accumulate(previous: EWCState | None, current: EWCState, decay: float = 1.0) -> EWCState:
    """Online EWC (Schwarz et al. 2018): F = decay·F_previous + F_current, anchored at the latest weights.

    decay = 1 sums the Fisher of every task so far, which is the multi-penalty EWC of Kirkpatrick et al. up to
    the anchors (each earlier task's own anchor is replaced by the latest one).
    """
    if previous is None:
        return current
    fisher = dict(current.fisher)
    for name, f in previous.fisher.items():
        fisher[name] = decay * f + fisher[name] if name in fisher else decay * f
    tasks = int(previous.meta.get("tasks", "1")) + int(current.meta.get("tasks", "1"))
    return EWCState(fisher, current.anchor, {**current.meta, "tasks": str(tasks)})


def save_ewc(state: EWCState, path: str | Path) -> Path:
    """One safetensors file: `fisher.<name>` and `anchor.<name>` tensors, string metadata. Written atomically."""
    path = Path(path)
    if path.is_dir():
        path = path / EWC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"fisher.{n}": t.contiguous() for n, t in state.fisher.items()}
    tensors.update({f"anchor.{n}": t.contiguous() for n, t in state.anchor.items()})
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt", **state.meta})
    tmp.replace(path)
    return path


def load_ewc(path: str | Path) -> EWCState:
    """Read what `save_ewc` wrote (a file, or a run folder holding ewc.safetensors)."""
    path = Path(path)
    if path.is_dir():
        path = path / EWC_FILE
    if not path.is_file():
        raise RunError(
            f"No EWC state at '{path}'. The previous stage must save its Fisher (save_ewc) before a later stage "
            "can use EWC; train that stage with EWC enabled, or point at the right run."
        )
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata() or {})
    meta.pop("format", None)
    tensors = load_file(path)
    fisher = {k.removeprefix("fisher."): v for k, v in tensors.items() if k.startswith("fisher.")}
    anchor = {k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")}
    return EWCState(fisher, anchor, meta)
