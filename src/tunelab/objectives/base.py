"""What an objective is, and the causal-LM maths the language-modelling objectives share.

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
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.data.tokenize import IGNORE, Tokenized, collate, model_inputs
from tunelab.schema import Section

if TYPE_CHECKING:  # objectives stay importable from config.py, which builds its union from this registry
    from tunelab.config import TunelabConfig
    from tunelab.data.prepare import PreparedData

Batch = dict[str, torch.Tensor]


@dataclass
class LossParts:
    """A loss as a sum over `count` items (tokens, pairs, ...), plus `correct` for accuracy where it applies."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor | None = None


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


@dataclass(frozen=True)
class LMContext:
    """What next-token objectives without a setup of their own need while training."""

    label_smoothing: float = 0.0


def lm_setup(cfg: Section, args: SetupArgs) -> tuple[nn.Module, LMContext]:
    """The default setup: the model as it is, and the training settings the causal-LM loss reads."""
    return args.model, LMContext(args.label_smoothing)


def target_tokens(batch: Batch) -> int:
    """How many next-token targets a causal-LM batch holds (the count its loss is normalised by)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def token_length(item: Tokenized) -> int:
    return len(item.input_ids)


def prepare_lm(cfg: TunelabConfig, tokenizer: PreTrainedTokenizerBase, run_dir: Path) -> PreparedData:
    """Chat and text records, tokenized for next-token training."""
    from tunelab.data.prepare import prepare_chat_data

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


def register(registry: dict[str, Objective], objective: Objective) -> None:
    """Add an objective, refusing a second entry under the same name."""
    if objective.name in registry:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    registry[objective.name] = objective


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The body and output head of a causal LM, or None when the forward must run whole (e.g. prompt tuning)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and (peft_config.is_prompt_learning or peft_config.is_adaption_prompt):
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return (decoder, head) if decoder is not None and head is not None else None


def selected_logits(model: nn.Module, batch: Batch, keep: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the positions `keep` (B x T-1, aligned with labels[:, 1:]) only.

    The output head runs only on those positions: with a 49k vocabulary, full logits for every prompt token
    would cost more memory and time than the whole transformer body for short answers.
    """
    parts = decoder_and_head(model)
    if parts is None:
        # Prompt tuning prepends num_virtual_tokens positions to the output; the last T are the input's own.
        logits = model(**model_inputs(batch), use_cache=False).logits[:, -batch["input_ids"].shape[1] :]
        return logits[:, :-1][keep]
    decoder, head = parts
    hidden = decoder(**causal_inputs(batch)).last_hidden_state
    return head(hidden[:, :-1][keep])


def causal_inputs(batch: Batch) -> dict[str, Any]:
    """The keyword arguments of a causal decoder's training forward.

    No KV cache: training never reuses it, and transformers finds packed sequences (positions restarting) only
    when no cache is passed; with one, packed examples would attend to each other. No padding mask on
    right-padded rows: causal attention alone already keeps every real token off the padding after it, and
    without the mask SDPA runs its causal kernel (no T x T mask, grouped key/value heads not copied out to every
    query head). Pad positions compute values that no target, hidden state or attention row at a target reads.
    """
    inputs = {**model_inputs(batch), "use_cache": False}
    if right_padded(inputs.get("attention_mask")):
        del inputs["attention_mask"]
    return inputs


def right_padded(mask: torch.Tensor | None) -> bool:
    """Whether every row of an attention mask is ones then zeros (padding only after the tokens)."""
    return mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all())


def causal_lm_loss(model: nn.Module, batch: Batch, ctx: Any = None) -> LossParts:
    """Summed next-token cross-entropy over positions whose label is not IGNORE.

    With `ctx.label_smoothing` (an `LMContext`) the targets are smoothed while the model trains; in eval mode the
    loss stays the plain negative log-likelihood, so validation loss and perplexity keep their meaning.
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = selected_logits(model, batch, keep)
    targets = labels[keep]
    smoothing = getattr(ctx, "label_smoothing", 0.0) if model.training else 0.0
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=smoothing)
    correct = (logits.argmax(-1) == targets).sum()
    return LossParts(loss_sum=loss_sum, count=keep.sum(), correct=correct)


def token_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens (flat, in the row-major order of `labels[:, 1:] != IGNORE`) and the
    row each belongs to."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = selected_logits(model, batch, keep).float()
    return logits.log_softmax(-1).gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1), keep.nonzero()[:, 0]


def sequence_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the labelled tokens, and how many there are (both shape B).

    This is log π(y|x) for preference objectives: labels hold the answer tokens, IGNORE on the prompt and padding.
    """
    logps, rows = token_logps(model, batch)
    size = batch["labels"].size(0)
    sums = torch.zeros(size, device=logps.device).index_add(0, rows, logps)
    return sums, torch.bincount(rows, minlength=size)
