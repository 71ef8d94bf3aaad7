"""Per-model ensemble weights fitted on validation data.

w = softmax(θ) keeps the weights positive and summing to 1 without constraints; θ minimises the validation
negative log-likelihood of the combined prediction. For the probability mixture the NLL is convex in w, so the
optimum is unique up to members that never matter; L-BFGS finds it in a few dozen steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE
from tunelab.export.ensemble.combine import Combine, combine_logits
from tunelab.export.ensemble.model import EnsembleModel


def fit_weights(
    logits: torch.Tensor, targets: torch.Tensor, combine: Combine = "probs", steps: int = 50
) -> torch.Tensor:
    """Weights (M,) minimising the NLL of `targets` (N,) under the combination of `logits` (M, N, C)."""
    logits = logits.detach().float()
    if combine == "probs":
        # Only the probability each member gives the right answer enters a mixture's likelihood.
        target_logprobs = torch.log_softmax(logits, -1).gather(
            -1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)
        )
        return fit_mixture_weights(target_logprobs.squeeze(-1), steps)
    theta = torch.zeros(logits.shape[0], requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(combine_logits(list(logits), torch.softmax(theta, 0), "logits"), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(theta.detach(), 0)


def fit_mixture_weights(target_logprobs: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """Weights (M,) minimising -mean_n log Σ_m w_m p_m(y_n), from log p_m(y_n) as an (M, N) tensor."""
    lp = target_logprobs.detach().float()
    theta = torch.zeros(lp.shape[0], requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -torch.logsumexp(torch.log_softmax(theta, 0)[:, None] + lp, dim=0).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(theta.detach(), 0)


@torch.no_grad()
def member_target_logprobs(ensemble: EnsembleModel, batches: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """log p_m(next token) of every member at every target position of causal-LM batches (labels != IGNORE),
    as an (M, tokens) tensor for `fit_mixture_weights`."""
    columns = []
    for batch in batches:
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        rows = []
        for k in range(ensemble.size):
            logits = ensemble.run_member(k, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), -1)
            rows.append(logprobs[keep].gather(-1, labels[keep][:, None]).squeeze(-1))
        columns.append(torch.stack(rows))
    return torch.cat(columns, dim=1)
