"""The `training.adversarial` section: embedding-space adversarial training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.core.schema import Section


class AdversarialSection(Section):
    method: Literal["fgm", "pgd", "freelb", "smart"] = "fgm"
    """`fgm`: one gradient step of size `epsilon` (Miyato et al., 2017); `pgd`: `steps` projected steps of size
    `alpha` inside the `epsilon` ball (Madry et al., 2018); `freelb`: the loss averaged over the `steps` points of
    the ascent path (Zhu et al., 2020); `smart`: a smoothness penalty, the symmetric KL between the outputs on
    clean and perturbed inputs, maximised over the perturbation (Jiang et al., 2020)."""
    epsilon: float = Field(default=1.0, gt=0)
    """Largest perturbation of each token's input embedding (L2 norm per token). Compare with the embeddings'
    own norms (about 1-2 for small Llama-style models)."""
    alpha: float = Field(default=0.3, gt=0)
    """Step size of each ascent step (pgd, freelb, smart), as an L2 norm per token."""
    steps: int = Field(default=2, ge=1)
    """Ascent steps (pgd, freelb, smart; fgm always takes one)."""
    weight: float = Field(default=1.0, gt=0)
    """Weight of the adversarial term added to the clean loss (fgm, pgd; smart's λ_s). FreeLB replaces the clean
    loss by the average over its path, so the weight does not apply to it."""
    init_std: float = Field(default=1e-3, ge=0)
    """Standard deviation of the random start of the perturbation (pgd, freelb, smart); 0 starts at zero."""
