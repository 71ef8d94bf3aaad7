"""Continued pretraining (domain adaptation): next-token loss on every token of raw text, packed.

Text records (`.txt` files, or rows with a `text` field) carry loss on every token and are cut into
`data.max_length` windows; packing fills each window with several short texts (positions restart per text and
no text attends to another), so no compute goes to padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from transformers import PreTrainedTokenizerBase

from tunelab.core.schema import Section
from tunelab.objectives.base import Objective
from tunelab.objectives.lm import causal_lm_loss

if TYPE_CHECKING:
    from tunelab.config import TunelabConfig
    from tunelab.data.pipeline import PreparedData


class PretrainConfig(Section):
    name: Literal["pretrain"] = "pretrain"
    pack: bool = True
    """Pack several texts into each `data.max_length` sequence (overrides `data.packing`)."""


def prepare_text(cfg: TunelabConfig, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> PreparedData:
    from tunelab.data.pipeline import prepare_chat_data

    data_cfg = cfg.data.model_copy(update={"packing": cfg.objective.pack})
    return prepare_chat_data(data_cfg, tokenizer, cfg.training.seed, run_dir, batch_size=cfg.training.batch_size)


OBJECTIVE = Objective(
    name="pretrain", loss=causal_lm_loss, row_independent=True, config=PretrainConfig, prepare=prepare_text
)
