"""REPLUG LSR (Shi et al., 2023, "REPLUG: Retrieval-Augmented Black-Box Language Models", section 4).

For a question x with answer y and its top-k retrieved passages d_1..d_k:

    P_R(d | x)    = softmax_d( sim(q(x), d) / τ )              the retriever's distribution over the k passages
    Q(d | x, y)   = softmax_d( log P_LM(y | d, x) / β )          how much each passage helps the language model
    loss          = KL( Q || P_R ) = Σ_d Q(d) (log Q(d) - log P_R(d))

Q is a target: it carries no gradient, so the loss moves only the retriever (toward the passages under which the
language model finds the answer likely).
"""

from __future__ import annotations

import torch


def replug_kl(scores: torch.Tensor, lm_logps: torch.Tensor, tau: float, beta: float) -> torch.Tensor:
    """KL(Q || P_R) per question (shape B) from retrieval similarities and answer log-likelihoods (both B x k)."""
    log_p = (scores.float() / tau).log_softmax(-1)
    log_q = (lm_logps.detach().float() / beta).log_softmax(-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)
