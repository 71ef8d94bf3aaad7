"""What an objective is: the contract between an objective module and the loop and run recipes that use it.

An objective is more than a loss: it says which data it trains on (`prepare`: records -> training items), how
items become a batch (`collate`, `length`, `count`), and what it needs besides the model (`setup`: a reference
model for DPO, a teacher for distillation, a head for a reward model). The loop only ever calls `loss`,
`collate`, `length` and `count`; the run recipe calls the rest once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.tokenize import collate
from tunelab.objectives.lm import LMContext, target_tokens, token_length

if TYPE_CHECKING:  # objectives stay importable from config.py, which builds its union from this registry
    from tunelab.config import TunelabConfig
    from tunelab.data.pipeline import PreparedData


class ObjectiveSection(Section):
    """Settings of an objective without options of its own."""

    name: str = "sft"


@dataclass
class SetupArgs:
    """What an objective's `setup` may use: the model to train (the method already applied) and the run around it."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    bf16: bool
    run_dir: Path
    data: PreparedData
    method: str
    """The method's name (`lora`, `full`, ...): whether disabling an adapter gives back the starting model."""
    label_smoothing: float = 0.0
    """`training.label_smoothing`: the share of each target's probability spread over all classes (or tokens)."""


def lm_setup(cfg: Section, args: SetupArgs) -> tuple[nn.Module, LMContext]:
    """The default setup: the model as it is, and the training settings the causal-LM loss reads."""
    return args.model, LMContext(args.label_smoothing)


def prepare_lm(cfg: TunelabConfig, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> PreparedData:
    """Chat and text records, tokenized for next-token training."""
    from tunelab.data.pipeline import prepare_chat_data

    return prepare_chat_data(cfg.data, tokenizer, cfg.training.seed, run_dir, batch_size=cfg.training.batch_size)


def identity(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Objective:
    """One training objective. Only `name` and `loss` are required; the defaults are next-token training."""

    name: str
    loss: Callable[[nn.Module, Batch, Any], LossParts]
    """(model, batch, ctx) -> summed loss; `ctx` is what `setup` built (None without setup)."""
    config: type[Section] = ObjectiveSection
    prepare: Callable[[TunelabConfig, PreTrainedTokenizerBase, Path], PreparedData] = prepare_lm
    setup: Callable[[Any, SetupArgs], tuple[nn.Module, Any]] | None = lm_setup
    """(objective config, args) -> (the module to train, ctx). The module may wrap the model (a head, projections)."""
    collate: Callable[[list[Any], int], Batch] = collate
    length: Callable[[Any], int] = token_length
    """An item's length in tokens, for length-grouped batching."""
    count: Callable[[Batch], int] = target_tokens
    """What a batch's loss is normalised by, counted before the forward (tokens, pairs, sequences)."""
    metric: Literal["token_acc", "pair_acc", "acc", "reward"] = "token_acc"
    """What `LossParts.correct / count` measures; validation reports it as `val_<metric>` (`reward`: the mean
    reward, `correct` then being the summed reward)."""
    perplexity: bool = True
    """Whether exp(val_loss) is a perplexity worth reporting."""
    row_independent: bool = False
    """Whether a batch's summed loss is the sum of its rows' own losses (no row needs another: no in-batch
    negatives, no pairs split across rows, no batch statistics), so that the loop may run a micro-batch as smaller
    pieces (`training.micro_batch_tokens`) and get the same gradient."""
    body: Callable[[nn.Module], nn.Module] = identity
    """The method-applied model inside the trained module: what the method saves and what generates."""
    save_extra: Callable[[nn.Module, Path], None] | None = None
    """Writes what the method does not save (a reward head) next to the method's result."""
    scores: Callable[[nn.Module, list[Any], int, int, torch.device, bool], dict[str, float]] | None = None
    """(model, validation items, batch size, pad id, device, bf16) -> metrics that need every prediction rather
    than running sums (macro-F1, entity F1); added to the evaluation before and after training."""
