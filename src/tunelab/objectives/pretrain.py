"""Continued pretraining (domain adaptation): next-token loss on every token of raw text, packed.

Text records (`.txt` files, or rows with a `text` field) carry loss on every token and are cut into
`data.max_length` windows; packing fills each window with several short texts (positions restart per text and
no text attends to another), so no compute goes to padding.
"""

from __future__ import annotations

from typing import Literal

from tunelab.core.schema import Section
from tunelab.data.pipeline import PreparedData, prepare_chat_data
from tunelab.objectives.base import Objective, PrepareArgs
from tunelab.objectives.lm import causal_lm_loss


class PretrainConfig(Section):
    name: Literal["pretrain"] = "pretrain"
    pack: bool = True
    """Pack several texts into each `data.max_length` sequence (overrides `data.packing`)."""


def prepare_text(args: PrepareArgs[PretrainConfig]) -> PreparedData:
    data = args.data.model_copy(update={"packing": args.objective.pack})
    return prepare_chat_data(data, args.tokenizer, args.seed, args.run_dir, batch_size=args.batch_size)


OBJECTIVE = Objective(
    name="pretrain", loss=causal_lm_loss, row_independent=True, config=PretrainConfig, prepare=prepare_text
)
