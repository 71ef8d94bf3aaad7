"""Supervised fine-tuning: next-token loss on the answer tokens chosen by `data.loss_on`."""

from __future__ import annotations

from typing import Literal

from tunelab.core.schema import Section
from tunelab.objectives.base import Objective
from tunelab.objectives.lm import causal_lm_loss


class SFTConfig(Section):
    name: Literal["sft"] = "sft"


OBJECTIVE = Objective(name="sft", loss=causal_lm_loss, row_independent=True, config=SFTConfig)
