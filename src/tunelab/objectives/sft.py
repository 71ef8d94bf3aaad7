"""Supervised fine-tuning: next-token loss on the answer tokens chosen by `data.loss_on`."""

from __future__ import annotations

from typing import Literal

from tunelab.objectives.base import Objective, causal_lm_loss
from tunelab.schema import Section


class SFTConfig(Section):
    name: Literal["sft"] = "sft"


OBJECTIVE = Objective(name="sft", loss=causal_lm_loss, row_independent=True, config=SFTConfig)
