"""Divergences between the teacher's and the student's next-token distributions, per position.

All take log-probabilities over the same support (the whole vocabulary, or the teacher's top-k tokens
renormalised) and return one value per position:
- forward KL(p_T || p_S): mean-seeking, the student covers every mode of the teacher (Hinton et al., 2015)
- reverse KL(p_S || p_T): mode-seeking, the student puts its mass where the teacher is confident (MiniLLM)
- generalised JSD_β = β KL(p_T || M) + (1-β) KL(p_S || M), M = β p_T + (1-β) p_S (GKD, Agarwal et al., 2024,
  Eq. 1; β → 0 behaves like forward KL scaled by β, β → 1 like reverse KL), TRL's convention for β.
With a temperature τ both distributions are softened (logits / τ) and the divergence is multiplied by τ², which
keeps its gradients on the scale of the hard-label loss (Hinton et al., 2015, section 2).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dimension, from log-probabilities; 0·log 0 counts as 0."""
    p = p_logp.exp()
    return torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p)).sum(-1)


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: Divergence, beta: float = 0.5):
    """Per-position divergence between teacher and student (log-probs over the last dimension)."""
    if kind == "forward_kl":
        return kl(teacher_logp, student_logp)
    if kind == "reverse_kl":
        return kl(student_logp, teacher_logp)
    if kind == "jsd":
        if not 0 < beta < 1:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
        mixture = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
        return beta * kl(teacher_logp, mixture) + (1 - beta) * kl(student_logp, mixture)
    raise ValueError(f"unknown divergence {kind!r}")


def soft_logps(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / τ) in fp32."""
    return (logits.float() / temperature).log_softmax(-1)


def topk_logps(
    student_logits: torch.Tensor, ids: torch.Tensor, teacher_logps: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs restricted to the teacher's top-k tokens `ids` and renormalised there.

    `teacher_logps` are the teacher's log-probs of those tokens at temperature 1 (what the cache stores);
    softening them by τ and renormalising over the k tokens equals restricting softmax(z/τ) to them.
    """
    student = soft_logps(student_logits, temperature).gather(-1, ids.long())
    student = student - student.logsumexp(-1, keepdim=True)
    teacher = (teacher_logps.float() / temperature).log_softmax(-1)
    return student, teacher


def distill_terms(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    kind: Divergence,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """τ² · divergence per position; `teacher` is full logits (N x V) or cached top-k (ids, log-probs) (N x k)."""
    if isinstance(teacher, tuple):
        student_logp, teacher_logp = topk_logps(student_logits, *teacher, temperature)
    else:
        student_logp, teacher_logp = soft_logps(student_logits, temperature), soft_logps(teacher, temperature)
    return temperature**2 * divergence(student_logp, teacher_logp, kind, beta)
