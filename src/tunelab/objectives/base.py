"""What an objective is: the contract between an objective module and the loop and run recipe that use it.

An objective is more than a loss: it says which data it trains on (`prepare`: the data section -> training items),
how items become a batch (`collate`, `length`, `count`), and what it needs besides the model (`setup`: a reference
model for DPO, a teacher for distillation, a head for a reward model). The loop only ever calls `loss`,
`collate`, `length` and `count`; the run recipe calls the rest once. An objective receives its own section and
plain arguments (`PrepareArgs`, `SetupArgs`), never the whole run config, and says what it changes by returning
it (`Setup`), never by changing what it was given.

`Objective[C, X]` is generic in its config section `C` and in `X`, what its setup builds for the loss (the
`ctx` every loss call receives: a reference, a teacher, the rollout state of RL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.config import DataSection
from tunelab.data.pipeline import PreparedData, prepare_chat_data, prepare_dataset
from tunelab.data.store import PreparedDataset
from tunelab.data.tokenize import collate
from tunelab.models.parts import output_head
from tunelab.objectives.lm import LMContext, target_tokens, token_length

C = TypeVar("C", bound=Section)
X = TypeVar("X")


@dataclass(frozen=True)
class PrepareArgs(Generic[C]):
    """What an objective's `prepare` may use: its own section, the data section, and the run around them."""

    objective: C
    data: DataSection
    tokenizer: PreTrainedTokenizerBase
    run_dir: Path
    """Where the data reports and rejects go (and objective-specific files, such as a teacher's answers)."""
    seed: int
    """`training.seed`: splits, sampling and anything else drawn at random."""
    batch_size: int = 8
    """`training.batch_size`, for the padding estimate of the data report."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where a model used while preparing runs (seq_distill's teacher)."""
    bf16: bool = False
    """Whether such a model computes in bf16."""

    def dataset(self) -> PreparedDataset:
        """The data pipeline's result for these settings (built once, then reused from the cache)."""
        return prepare_dataset(self.data, self.tokenizer, self.seed, self.run_dir, batch_size=self.batch_size)


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
    loss_chunk_tokens: int = 0
    """`training.loss_chunk_tokens`: the next-token loss runs in chunks of this many targets (0: in one piece)."""


@dataclass
class Setup(Generic[X]):
    """What an objective's `setup` built: the module to train, what its loss reads, and what the run should use
    instead of what it passed in."""

    module: nn.Module
    """What trains: the method-applied model itself, or a module around it (a head, projections, a retriever)."""
    ctx: X
    """Handed to every `loss` call (a reference, a teacher, settings)."""
    data: PreparedData | None = None
    """The data to train on when setup changes it (items carrying a teacher's cached top-k, validation prompts
    that hold retrieved passages); None: the data as prepared."""
    head: nn.Module | None = None
    """The output layer the loss reads (a task head; default: the model's language-model head). It trains at
    `training.head_lr`, and SMART compares its outputs."""
    learning_rates: dict[str, float] = field(default_factory=dict)
    """Own learning rates of submodules of `module`, by dotted name (a retriever trained beside the generator)."""

    def output_layer(self) -> nn.Module | None:
        """`head`, or the language-model head of the model inside `module`."""
        return self.head if self.head is not None else output_head(self.module)


class ObjectiveSection(Section):
    """Settings of an objective without options of its own."""

    name: str = "sft"


def require_kind(
    kinds: dict[str, int],
    kind: str,
    objective: str,
    rows: str,
    instead: str = "choose another objective",
    settings: str = "",
) -> None:
    """Refuse data that is not all of `kind` (the report's record counts by kind) with one `DataError` that says
    what the data holds, what `objective` (with `settings`, e.g. " with task=ner") trains on (`rows`: which fields
    such rows have) and what to do instead."""
    if set(kinds) != {kind}:
        shown = ", ".join(f"{n} {k}" for k, n in kinds.items())
        raise DataError(
            f"The training data holds {shown} records, but objective '{objective}'{settings} trains on {rows}. "
            f"Give such files, or {instead}."
        )


def prepare_lm(args: PrepareArgs[Any]) -> PreparedData:
    """Chat and text records, tokenized for next-token training."""
    return prepare_chat_data(args.data, args.tokenizer, args.seed, args.run_dir, batch_size=args.batch_size)


def lm_setup(cfg: Section, args: SetupArgs) -> Setup[LMContext]:
    """The default setup: the model as it is, and the training settings the causal-LM loss reads."""
    return Setup(args.model, LMContext(args.label_smoothing, args.loss_chunk_tokens))


def identity(model: nn.Module) -> nn.Module:
    return model


@dataclass(frozen=True)
class Objective(Generic[C, X]):
    """One training objective. Only `name`, `loss` and `config` are required; the defaults are next-token training."""

    name: str
    loss: Callable[[nn.Module, Batch, X], LossParts]
    """(module, batch, ctx) -> summed loss; `ctx` is what `setup` built."""
    config: type[C]
    prepare: Callable[[PrepareArgs[C]], PreparedData] = prepare_lm
    setup: Callable[[C, SetupArgs], Setup[X]] = lm_setup  # type: ignore[assignment]
    """(objective config, args) -> what trains and what the loss reads."""
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
    save_extra: Callable[[nn.Module, X, Path], None] | None = None
    """(trained module, ctx, folder): writes what the method does not save (a reward head, a retriever) next to
    the method's result."""
    scores: Callable[[nn.Module, list[Any], int, int, torch.device, bool], dict[str, float]] | None = None
    """(module, validation items, batch size, pad id, device, bf16) -> metrics that need every prediction rather
    than running sums (macro-F1, entity F1); added to the evaluation before and after training."""
