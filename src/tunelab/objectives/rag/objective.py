"""Retrieval-augmented fine-tuning, with the retriever trained jointly from the generator's feedback (REPLUG LSR).

Each training question x retrieves its top-k passages by cosine similarity. The generator learns the answer y with
the top `prompt_passages` of them in its prompt (the next-token loss on the answer, averaged over its tokens):
with the default of one passage, that is training on the top-1 passage, not REPLUG's marginal over all k.

With `joint: true` the retriever learns in the same step (Shi et al., 2023, see tunelab.rag.losses): the generator
scores log P_LM(y | d_i, x) for each of the k passages on its own (no gradient), Q = softmax(those / β) is the
target and KL(Q || P_R), P_R = softmax(sim / τ), trains the question encoder. The encoder is a submodule of the
trained module with its own learning rate in the loop's optimizer (`retriever_lr`), so checkpoints and resume
cover it; passage vectors are recomputed every `refresh_every` training batches. The two terms are summed per
question: their gradients reach disjoint weights, so no weighting between them is needed (only the loop's
gradient clipping sees them together). With `joint: false` the retriever is frozen and its rankings cached.

Loss and accuracy count questions: `val_acc` is the share of validation questions whose every answer token is
the argmax under teacher forcing. The retriever is saved next to the generator (`retriever/`, a
sentence-transformers folder) with its recall on the validation questions (`retrieval_eval.json`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast, overload

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import ConfigError
from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example
from tunelab.models.load import resolve_source, tokenizer_from_folder
from tunelab.objectives.base import Objective, PrepareArgs, Setup, SetupArgs
from tunelab.objectives.embed.retrieval import retrieval_metrics
from tunelab.objectives.rag.data import Passage, QARow, corpus_path, hold_out, read_corpus, read_questions
from tunelab.objectives.rag.generator import DEFAULT_TEMPLATE, AnswerScores, answer_scores, rag_example
from tunelab.objectives.rag.losses import replug_kl
from tunelab.objectives.rag.retriever import Retriever, load_retriever, save_retriever


class RagConfig(Section):
    name: Literal["rag"] = "rag"
    corpus: str
    """JSON Lines file of passages, one {"id", "text"} per row. A relative path that does not exist from the current
    folder is read from the folder of the first `data.train` file. Questions come from `data.train` /
    `data.validation`: JSON Lines rows {"question", "answer", optional "passage": the gold passage id}."""
    retriever: str = "minilm-l6"
    """The sentence encoder that retrieves: an embedded encoder, an encoder folder, or a saved retriever folder."""
    top_k: int = Field(default=4, ge=1)
    """Passages retrieved per question: the support of the retrieval distribution in joint training."""
    prompt_passages: int = Field(default=1, ge=1)
    """How many of the top passages (best first) go into the generator's prompt."""
    template: str = DEFAULT_TEMPLATE
    """The user message, with `{passages}` (one per line) and `{question}`."""
    joint: bool = False
    """Train the retriever's encoder from the generator's feedback (REPLUG LSR) while the generator trains."""
    retriever_lr: float = Field(default=2e-5, gt=0)
    """Learning rate of the retriever's encoder in joint training (the generator uses training.learning_rate)."""
    temperature: float = Field(default=0.05, gt=0)
    """τ of the retrieval distribution softmax(cosine / τ) over the top k."""
    lm_temperature: float = Field(default=1.0, gt=0)
    """β of the target softmax(log P_LM(answer | passage, question) / β)."""
    refresh_every: int = Field(default=10, ge=1)
    """Re-embed the corpus with the training encoder after this many training batches (joint training)."""
    query_max_length: int = Field(default=64, ge=4)
    """Question tokens the retriever reads."""
    passage_max_length: int = Field(default=128, ge=4)
    """Passage tokens the retriever reads."""

    @model_validator(mode="after")
    def _consistent(self) -> RagConfig:
        if self.prompt_passages > self.top_k:
            raise ValueError(f"prompt_passages ({self.prompt_passages}) cannot exceed top_k ({self.top_k})")
        for key in ("{passages}", "{question}"):
            if key not in self.template:
                raise ValueError(f"template must contain {key}; got {self.template!r}")
        return self


@dataclass
class RagItem:
    index: int
    """Position in the run's question list (training questions first)."""
    row: QARow
    query_ids: list[int]
    """The question in the retriever's tokens."""


@dataclass
class RagData(PreparedData):
    passages: list[Passage] = field(default_factory=list)
    max_length: int = 1024
    system_prompt: str | None = None


class RagModel(nn.Module):
    """The generator (method applied) and the retriever, trained as one module."""

    def __init__(self, generator: nn.Module, retriever: Retriever) -> None:
        super().__init__()
        self.generator = generator
        self.retriever = retriever

    def train(self, mode: bool = True) -> RagModel:
        # The encoder's dropout stays off: the ranking that fills the prompt and P_R is the one evaluation sees.
        super().train(mode)
        self.retriever.encoder.eval()
        return self


@dataclass
class RagContext:
    cfg: RagConfig
    tokenizer: PreTrainedTokenizerBase
    items: list[RagItem]
    max_length: int
    system_prompt: str | None
    cached: dict[int, list[int]] = field(default_factory=dict)
    """Frozen retriever: each question's top k, computed once."""
    batches: int = 0
    """Training batches since training last rebuilt the index (0: not yet)."""
    val_rows: list[QARow] = field(default_factory=list)
    """The validation questions, whose gold passages the saved retriever's recall is measured on."""


def prepare_rag(args: PrepareArgs[RagConfig]) -> RagData:
    """Read the corpus and the question files; questions are tokenized for the retriever."""
    rcfg, data = args.objective, args.data
    passages = read_corpus(corpus_path(rcfg.corpus, data.train))
    ids = {p.id for p in passages}
    train = read_questions(data.train, ids)
    val = read_questions(data.validation, ids)
    if not data.validation:
        train, val = hold_out(train, data.val_fraction, args.seed)
    query_tokenizer = tokenizer_from_folder(resolve_source(rcfg.retriever).materialize(), chat=False)
    items = [
        RagItem(i, row, query_tokenizer(row.question, truncation=True, max_length=rcfg.query_max_length)["input_ids"])
        for i, row in enumerate([*train, *val])
    ]
    report = {"rows": len(items), "train_examples": len(train), "val_examples": len(val), "rejected": 0}
    report["corpus_passages"] = len(passages)
    train_items, val_items = items[: len(train)], items[len(train) :]
    return RagData(
        train=train_items, val=val_items, val_examples=[], report=report,
        passages=passages, max_length=data.max_length, system_prompt=data.system_prompt,
    )  # fmt: skip


def collate_rag(items: list[RagItem], pad_id: int) -> Batch:
    """Question ids for the retriever, right-padded with 0 under an attention mask (padding never reaches the
    pooled vector), and each item's index, by which the loss finds its question and answer."""
    width = max(len(i.query_ids) for i in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.query_ids)] = torch.tensor(item.query_ids)
        mask[row, : len(item.query_ids)] = 1
    return {"item": torch.tensor([i.index for i in items]), "query_ids": ids, "attention_mask": mask}


def rag_terms(model: RagModel, batch: Batch, ctx: RagContext) -> tuple[AnswerScores, torch.Tensor | None]:
    """The generator's answer scores with the top `prompt_passages` in its prompt, and in joint training the
    retriever's KL(Q || P_R) per question (None when the retriever is frozen)."""
    cfg, retriever = ctx.cfg, model.retriever
    items = [ctx.items[i] for i in batch["item"].tolist()]
    k = min(cfg.top_k, len(retriever.passages))
    training = model.training and torch.is_grad_enabled()
    sims = None
    if cfg.joint:
        # The first training batch re-embeds too: a resumed run's encoder is not the one an earlier index saw.
        if training and (ctx.batches == 0 or ctx.batches >= cfg.refresh_every):
            retriever.refresh_()
            ctx.batches = 0
        elif not training and retriever.stale:
            retriever.refresh_()
        with torch.set_grad_enabled(training):
            scores = retriever.scores(retriever.embed(batch["query_ids"], batch["attention_mask"]))
        top = scores.detach().topk(k, dim=-1).indices
        sims = scores.gather(1, top)
        if training:
            ctx.batches += 1
            retriever.stale = True  # the optimizer step after this batch moves the encoder
    else:
        missing = [it for it in items if it.index not in ctx.cached]
        if missing:
            found = retriever.search([it.row.question for it in missing], k)
            ctx.cached.update({it.index: row.tolist() for it, row in zip(missing, found, strict=True)})
        top = torch.tensor([ctx.cached[it.index] for it in items])
    ranked = top.tolist()

    def score(columns: list[int]) -> AnswerScores:
        examples = [
            rag_example(cfg.template, [retriever.passages[ranked[r][c]].text for c in columns], it.row.question,
                        it.row.answer, it.row.origin)
            for r, it in enumerate(items)
        ]  # fmt: skip
        return answer_scores(model.generator, ctx.tokenizer, examples, max_length=ctx.max_length,
                             system_prompt=ctx.system_prompt)  # fmt: skip

    gen = score(list(range(cfg.prompt_passages)))
    if sims is None:
        return gen, None
    # log P_LM(y | d_i, x) for each passage alone, every question of the batch at once. With one passage in the
    # prompt, the generator's own forward already scored d_1 (detached here), which saves one pass in k.
    reuse = cfg.prompt_passages == 1
    with torch.no_grad():
        nlls = [gen.nll.detach() if reuse and c == 0 else score([c]).nll for c in range(k)]
    lm_logps = -torch.stack(nlls, dim=1)
    return gen, replug_kl(sims, lm_logps, cfg.temperature, cfg.lm_temperature)


def rag_loss(model: nn.Module, batch: Batch, ctx: RagContext) -> LossParts:
    """Per question: the answer's mean token negative log-likelihood, plus KL(Q || P_R) in joint training."""
    assert isinstance(model, RagModel)
    gen, kl = rag_terms(model, batch, ctx)
    loss = (gen.nll / gen.tokens.clamp(min=1)).sum()
    if kl is not None:
        loss = loss + kl.sum()
    return LossParts(loss_sum=loss, count=torch.tensor(len(gen.nll)), correct=gen.right.sum())


class RetrievedExamples(Sequence[Example]):
    """Validation questions as chat records whose prompts hold the passages the retriever ranks best *now*, so
    generation metrics before and after training each use the retriever of that moment."""

    def __init__(self, rows: list[QARow], retriever: Retriever, cfg: RagConfig) -> None:
        self.rows, self.retriever, self.cfg = rows, retriever, cfg

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Example]:
        yield from self[:]  # one batched search, not one per question

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        rows = self.rows[i] if isinstance(i, slice) else [self.rows[i]]
        top = self.retriever.search([r.question for r in rows], self.cfg.prompt_passages) if rows else []
        out = [
            rag_example(self.cfg.template, [self.retriever.passages[j].text for j in t.tolist()], r.question,
                        r.answer, r.origin)
            for r, t in zip(rows, top, strict=True)
        ]  # fmt: skip
        return out if isinstance(i, slice) else out[0]


def retrieval_recall(retriever: Retriever, rows: list[QARow], ks: tuple[int, ...]) -> dict[str, float]:
    """recall@k and MRR (over the top max(ks)) of the gold passages of `rows` that name one."""
    judged = [(r.question, r.passage) for r in rows if r.passage is not None]
    if not judged:
        return {}
    top = retriever.search([question for question, _ in judged], max(ks))
    rankings = [[retriever.passages[j].id for j in t.tolist()] for t in top]
    metrics = retrieval_metrics(rankings, [{gold} for _, gold in judged], ks)
    return {name: value for name, value in metrics.items() if not name.startswith("ndcg")}


def _setup(cfg: RagConfig, args: SetupArgs) -> Setup[RagContext]:
    data = args.data
    assert isinstance(data, RagData)
    if cfg.prompt_passages > len(data.passages):
        raise ConfigError(
            f"objective.prompt_passages is {cfg.prompt_passages}, but the corpus {cfg.corpus} holds only "
            f"{len(data.passages)} passages. Lower prompt_passages or give a larger corpus."
        )
    retriever = load_retriever(
        cfg.retriever, data.passages, query_max_length=cfg.query_max_length, passage_max_length=cfg.passage_max_length
    ).to(args.device)
    retriever.requires_grad_(cfg.joint)
    train, val = cast(list[RagItem], data.train), cast(list[RagItem], data.val)  # what prepare_rag makes
    val_rows = [item.row for item in val]
    ctx = RagContext(cfg, args.tokenizer, [*train, *val], data.max_length, data.system_prompt,
                     val_rows=val_rows)  # fmt: skip
    # Generation metrics before and after training each use the retriever of that moment.
    retrieved = replace(data, val_examples=RetrievedExamples(val_rows, retriever, cfg))
    rates = {"retriever": cfg.retriever_lr} if cfg.joint else {}
    return Setup(RagModel(args.model, retriever), ctx, data=retrieved, learning_rates=rates)


def _save_retriever(model: nn.Module, ctx: RagContext, folder: Path) -> None:
    assert isinstance(model, RagModel)
    save_retriever(model.retriever, folder / "retriever")
    recall = retrieval_recall(model.retriever, ctx.val_rows, tuple(sorted({1, ctx.cfg.top_k})))
    (folder / "retrieval_eval.json").write_text(json.dumps(recall, indent=2))


OBJECTIVE = Objective(
    name="rag",
    loss=rag_loss,
    config=RagConfig,
    prepare=prepare_rag,
    setup=_setup,
    collate=collate_rag,
    length=lambda item: len(item.query_ids),
    count=lambda batch: int(batch["item"].numel()),
    metric="acc",
    perplexity=False,
    body=lambda model: model.generator if isinstance(model, RagModel) else model,
    save_extra=_save_retriever,
)
