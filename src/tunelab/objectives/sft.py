"""Supervised fine-tuning: next-token loss on the answer tokens chosen by `data.loss_on`."""

from __future__ import annotations

from tunelab.objectives.base import Objective, causal_lm_loss

OBJECTIVE = Objective(name="sft", loss=causal_lm_loss)
