"""Knowledge distillation from a teacher with the same tokenizer: logits, hidden states and attention maps.

Per target token:  α · τ² · D(p_T^τ, p_S^τ) + (1 - α) · CE(y, p_S)     (Hinton et al., 2015; D from distill.losses)
plus, on chosen (student, teacher) layer pairs, hidden-state matching, mean over dimensions of
(W h_S - h_T)² with a learned projection W when the widths differ (FitNets, Romero et al., 2015), and
attention-map matching, KL(A_T || A_S) of each query's attention row averaged over heads (MiniLM, Wang et al.,
2020). Everything is summed over target tokens, so the loop normalises it like the SFT loss.

The teacher (any model source or finished run) runs alongside the student, or, with `top_k`, once before training:
its top-k log-probs per target token are cached on disk (see distill.cache) and the teacher is freed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedModel

from tunelab.core.errors import ConfigError
from tunelab.core.paths import tunelab_home
from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.tokenize import IGNORE, Tokenized, collate
from tunelab.methods.trained import load_trained
from tunelab.models.load import pad_id
from tunelab.models.parts import base_model, decoder_and_head
from tunelab.objectives.base import Objective, Setup, SetupArgs
from tunelab.objectives.distill.cache import TopK, cached_topk, compute_topk, fingerprint, weight_files
from tunelab.objectives.distill.losses import Divergence, distill_terms, kl
from tunelab.objectives.lm import causal_inputs, target_tokens


class DistillConfig(Section):
    name: Literal["distill"] = "distill"
    teacher: str
    """The teacher: an embedded model name, a model folder, a .gguf file or a finished run folder. It must use the
    student's tokenizer (for another tokenizer use objective `seq_distill`)."""
    loss: Divergence = "forward_kl"
    """`forward_kl` KL(teacher‖student) covers every teacher mode; `reverse_kl` KL(student‖teacher) focuses on the
    teacher's confident tokens; `jsd` is the generalised Jensen-Shannon divergence with weight `beta`."""
    beta: float = Field(default=0.5, gt=0, lt=1)
    """Teacher weight β of the JSD mixture M = β·p_T + (1-β)·p_S."""
    temperature: float = Field(default=1.0, gt=0)
    """Softens both distributions (logits / τ); the divergence is scaled by τ²."""
    alpha: float = Field(default=0.5, ge=0, le=1)
    """Weight of the distillation term; 1 - alpha goes to the usual next-token loss on the data's labels."""
    top_k: int | None = Field(default=None, ge=1)
    """Cache the teacher's top-k log-probs per target token on disk before training instead of running the
    teacher each step (k of 20-50 keeps nearly all the mass)."""
    hidden_layers: list[tuple[int, int]] = []
    """(student, teacher) hidden-state pairs to match; 0 is the embeddings, i the output of layer i."""
    hidden_weight: float = Field(default=1.0, ge=0)
    """Weight of the hidden-state term."""
    attention_layers: list[tuple[int, int]] = []
    """(student, teacher) layer pairs (0-based) whose head-averaged attention maps are matched."""
    attention_weight: float = Field(default=1.0, ge=0)
    """Weight of the attention term."""

    @model_validator(mode="after")
    def _features_need_the_teacher(self) -> DistillConfig:
        if self.top_k is not None and (self.hidden_layers or self.attention_layers):
            raise ValueError("hidden/attention matching needs the teacher at every step; drop top_k or those pairs")
        return self


@dataclass
class DistillItem:
    """A training sequence with the teacher's cached top-k at its target positions."""

    seq: Tokenized
    topk: TopK


class DistillStudent(nn.Module):
    """The student plus the projections that map its hidden states to the teacher's width (trained, not saved)."""

    def __init__(self, model: nn.Module, projections: nn.ModuleList) -> None:
        super().__init__()
        self.model = model
        self.projections = projections


@dataclass
class DistillContext:
    cfg: DistillConfig
    teacher: nn.Module | None


@dataclass
class Outputs:
    logits: torch.Tensor
    """Logits at the target positions (N x V)."""
    hidden: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


def collate_distill(items: list[Any], pad_id: int) -> Batch:
    """`collate`, plus the cached top-k of every target position (in the order `labels[:, 1:] != IGNORE` reads)."""
    if not items or not isinstance(items[0], DistillItem):
        return collate(items, pad_id)
    batch = collate([i.seq for i in items], pad_id)
    batch["topk_ids"] = torch.cat([i.topk.ids for i in items])
    batch["topk_logps"] = torch.cat([i.topk.logps for i in items])
    return batch


def forward(model: nn.Module, batch: Batch, keep: torch.Tensor, hidden: bool, attentions: bool) -> Outputs:
    parts = decoder_and_head(model)
    if parts is None:
        raise ConfigError("objective distill needs a model whose forward runs whole (not prompt/prefix tuning).")
    decoder, head = parts
    out = decoder(**causal_inputs(batch), output_hidden_states=hidden, output_attentions=attentions)
    logits = head(out.last_hidden_state[:, :-1][keep])
    return Outputs(logits, out.hidden_states if hidden else None, out.attentions if attentions else None)


def distill_loss(model: nn.Module, batch: Batch, ctx: DistillContext) -> LossParts:
    cfg = ctx.cfg
    student = model.model if isinstance(model, DistillStudent) else model
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    hidden, attentions = bool(cfg.hidden_layers), bool(cfg.attention_layers)
    s = forward(student, batch, keep, hidden, attentions)
    targets = labels[keep]
    if "topk_ids" in batch:
        teacher, t = (batch["topk_ids"], batch["topk_logps"]), None
    else:
        assert ctx.teacher is not None  # setup keeps the teacher unless every batch carries its cached top-k
        with torch.no_grad():
            t = forward(ctx.teacher, batch, keep, hidden, attentions)
        teacher = t.logits
    loss = cfg.alpha * distill_terms(s.logits, teacher, cfg.loss, cfg.temperature, cfg.beta).sum()
    if cfg.alpha < 1:
        loss = loss + (1 - cfg.alpha) * F.cross_entropy(s.logits.float(), targets, reduction="sum")
    if hidden or attentions:
        assert t is not None  # feature matching needs the teacher's forward (the config rules out top_k with it)
        if hidden:
            projections = model.projections if isinstance(model, DistillStudent) else None
            loss = loss + cfg.hidden_weight * hidden_term(s, t, keep, cfg.hidden_layers, projections)
        if attentions:
            loss = loss + cfg.attention_weight * attention_term(s, t, keep, cfg.attention_layers)
    return LossParts(loss_sum=loss, count=keep.sum(), correct=(s.logits.argmax(-1) == targets).sum())


def hidden_term(
    s: Outputs, t: Outputs, keep: torch.Tensor, pairs: list[tuple[int, int]], projections: nn.ModuleList | None
) -> torch.Tensor:
    """Σ over target positions and layer pairs of mean_d (W h_S - h_T)²."""
    assert s.hidden is not None and t.hidden is not None  # both forwards ran with output_hidden_states
    total = torch.zeros((), device=keep.device)
    for k, (i, j) in enumerate(pairs):
        student = s.hidden[i][:, :-1][keep].float()
        teacher = t.hidden[j][:, :-1][keep].float()
        if projections is not None:
            student = projections[k](student)
        total = total + (student - teacher).pow(2).mean(-1).sum()
    return total


def attention_term(s: Outputs, t: Outputs, keep: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Σ over target positions and layer pairs of KL(A_T || A_S) of the head-averaged attention rows."""
    assert s.attentions is not None and t.attentions is not None  # both forwards ran with output_attentions
    total = torch.zeros((), device=keep.device)
    for i, j in pairs:
        student = s.attentions[i].float().mean(1)[:, :-1][keep].clamp(min=1e-12).log()
        teacher = t.attentions[j].float().mean(1)[:, :-1][keep].clamp(min=1e-12).log()
        total = total + kl(teacher, student).sum()
    return total


def _setup(cfg: DistillConfig, args: SetupArgs) -> Setup[DistillContext]:
    teacher, teacher_tokenizer = load_trained(cfg.teacher, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    if teacher_tokenizer.get_vocab() != args.tokenizer.get_vocab():
        raise ConfigError(
            f"objective.teacher '{cfg.teacher}' uses another tokenizer than the student, so their next-token "
            "distributions cannot be compared. Use objective seq_distill (the student learns the teacher's "
            "generated answers), or a teacher with the student's tokenizer."
        )
    teacher = teacher.to(args.device).eval().requires_grad_(False)
    # Inside any peft wrapper, both are transformers models.
    student_base = cast(PreTrainedModel, base_model(args.model))
    teacher_base = cast(PreTrainedModel, base_model(teacher))
    if cfg.attention_layers:  # attention probabilities are returned only by the eager kernel
        student_base.set_attn_implementation("eager")
        teacher_base.set_attn_implementation("eager")
    _check_layers(cfg, student_base.config.num_hidden_layers, teacher_base.config.num_hidden_layers)
    model: nn.Module = args.model
    s_width, t_width = student_base.config.hidden_size, teacher_base.config.hidden_size
    if cfg.hidden_layers and s_width != t_width:
        projections = nn.ModuleList(nn.Linear(s_width, t_width, bias=False) for _ in cfg.hidden_layers)
        model = DistillStudent(args.model, projections.to(args.device))
    if cfg.top_k is None:
        return Setup(model, DistillContext(cfg, teacher))
    k = cfg.top_k

    def teacher_logits(batch: Batch, keep: torch.Tensor) -> torch.Tensor:
        return forward(teacher, batch, keep, False, False).logits

    def with_topk(items: list[Tokenized]) -> list[DistillItem]:
        pad = pad_id(args.tokenizer)
        compute = lambda: compute_topk(teacher_logits, items, k, pad, args.device, args.bf16)  # noqa: E731
        topk = cached_topk(tunelab_home() / "distill", fingerprint(files, k, items), compute)
        return [DistillItem(seq, top) for seq, top in zip(items, topk, strict=True)]

    files = weight_files(cfg.teacher)
    data = replace(args.data, train=with_topk(args.data.train), val=with_topk(args.data.val))
    return Setup(model, DistillContext(cfg, None), data=data)  # every batch carries the teacher's top-k


def _check_layers(cfg: DistillConfig, student_layers: int, teacher_layers: int) -> None:
    for key, pairs, top in (("hidden_layers", cfg.hidden_layers, 0), ("attention_layers", cfg.attention_layers, 1)):
        for s, t in pairs:
            if not (0 <= s <= student_layers - top and 0 <= t <= teacher_layers - top):
                raise ConfigError(
                    f"objective.{key} pair ({s}, {t}) is out of range: the student has {student_layers} layers and "
                    f"the teacher {teacher_layers} (hidden states run from 0, the embeddings, to the layer count; "
                    "attention layers from 0 to the count minus one)."
                )


OBJECTIVE = Objective(
    name="distill",
    loss=distill_loss,
    config=DistillConfig,
    setup=_setup,
    collate=collate_distill,
    length=lambda item: len(item.seq.input_ids if isinstance(item, DistillItem) else item.input_ids),
    count=target_tokens,
    perplexity=False,
    body=lambda model: model.model if isinstance(model, DistillStudent) else model,
)
