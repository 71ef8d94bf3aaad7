"""The `setfit` objective: few-shot classification with a sentence encoder (e.g. `model.source: minilm-l6`).

Classification rows (`text`, `label`) become contrastive pairs (tunelab.fewshot.setfit.contrastive_pairs) and the
encoder learns that same-label texts lie close (cosine 1) and others apart (cosine 0). When the run saves, a
logistic-regression head is fitted on the trained encoder's embeddings of the training texts and written next to
the encoder as `setfit_head.json`, with its accuracy on the validation texts; `SetFitClassifier.load(folder)`
predicts with both. Validation during training reports the pairs' loss and `val_pair_acc` (cosine on the right
side of 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.schema import Section
from tunelab.core.types import Batch, LossParts
from tunelab.data.augment import smote_embeddings
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Example
from tunelab.models.pooling import embed_batch, encode
from tunelab.objectives.base import Objective, PrepareArgs, Setup, SetupArgs, require_kind
from tunelab.objectives.embed.contrastive import EmbedItem, collate_embed, count_anchors, embed_length
from tunelab.objectives.embed.setfit_head import contrastive_pairs, cosine_pair_loss, fit_head


class SetFitConfig(Section):
    name: Literal["setfit"] = "setfit"
    pairs_per_text: int = Field(default=20, ge=1)
    """Rounds of pair sampling: each round gives every text one same-label and one other-label partner
    (SetFit's `num_iterations`; 20 is its default)."""
    head_c: float = Field(default=1.0, gt=0)
    """Inverse L2 strength of the logistic-regression head (scikit-learn's `C`)."""


@dataclass
class SetFitItem(EmbedItem):
    target: float = 0.0
    """1 for a same-label pair, 0 for a different-label pair."""


@dataclass
class SetFitData(PreparedData):
    labelled: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    """Per split (`train`, `val`): the texts and their labels, for fitting and scoring the head."""
    smote_k: int | None = None
    """With `data.augment.smote`: SMOTE's neighbour count for the head's training embeddings (None: no SMOTE)."""


class SetFitModule(nn.Module):
    """The encoder being trained, with what fitting its head needs at save time (the labelled texts)."""

    def __init__(self, encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, data: SetFitData, cfg: SetFitConfig):
        super().__init__()
        self.encoder = encoder
        self.tokenizer, self.labelled, self.head_c = tokenizer, data.labelled, cfg.head_c
        self.smote_k = data.smote_k


def collate_setfit(items: list[SetFitItem], pad_id: int) -> Batch:
    batch = collate_embed(items, pad_id)
    batch["target"] = torch.tensor([item.target for item in items], dtype=torch.float32)
    return batch


def setfit_loss(model: nn.Module, batch: Batch, ctx: Any = None) -> LossParts:
    """Summed squared error of the pairs' cosine against their targets; `correct`: pairs on the right side of 0.5."""
    assert isinstance(model, SetFitModule)
    a = embed_batch(model.encoder, batch["anchor_input_ids"], batch["anchor_attention_mask"])
    b = embed_batch(model.encoder, batch["positive_input_ids"], batch["positive_attention_mask"])
    loss_sum, correct = cosine_pair_loss(a, b, batch["target"])
    return LossParts(loss_sum=loss_sum, count=torch.tensor(a.shape[0], device=a.device), correct=correct)


def prepare_setfit(args: PrepareArgs[SetFitConfig]) -> SetFitData:
    """Classification records -> contrastive pair items (train and validation) plus the labelled texts."""
    prepared, tokenizer = args.dataset(), args.tokenizer
    require_kind(
        prepared.report["kinds"], "classification", "setfit", "classification rows only: 'text' and 'label' fields"
    )
    settings = args.objective
    items: dict[str, list[SetFitItem]] = {}
    labelled: dict[str, tuple[list[str], list[str]]] = {}
    for split, name in (("train", "train_records"), ("val", "validation_records")):
        rows = [Example.from_row(r) for r in prepared.table(name).to_pylist()]
        texts, labels = [ex.text for ex in rows], [str(ex.label) for ex in rows]
        labelled[split] = (texts, labels)
        if len(set(labels)) < 2:
            items[split] = []
            continue
        ids = [list(tokenizer(t, truncation=True, max_length=args.data.max_length)["input_ids"]) for t in texts]
        rounds = settings.pairs_per_text if split == "train" else 1
        pairs = contrastive_pairs(labels, rounds, seed=args.seed)
        items[split] = [SetFitItem(ids[i], ids[j], [], target=t) for i, j, t in pairs]
    if not items["train"]:
        raise DataError("SetFit needs training rows of at least two labels; check the data's 'label' field.")
    report = {**prepared.report, "train_examples": len(items["train"]), "val_examples": len(items["val"])}
    smote_k = args.data.augment.smote_k if args.data.augment.smote else None
    train, val = items["train"], items["val"]
    return SetFitData(train, val, [], report, labelled=labelled, smote_k=smote_k)


def _setup(cfg: SetFitConfig, args: SetupArgs) -> Setup[SetFitConfig]:
    assert isinstance(args.data, SetFitData)
    return Setup(SetFitModule(args.model, args.tokenizer, args.data, cfg), cfg)


def _body(model: nn.Module) -> nn.Module:
    assert isinstance(model, SetFitModule)
    return model.encoder


def _save_head(model: nn.Module, cfg: SetFitConfig, folder: Path) -> None:
    """Phase 2: fit the logistic-regression head on the trained embeddings; record its accuracy."""
    assert isinstance(model, SetFitModule)
    texts, labels = model.labelled["train"]
    vectors = encode(model.encoder, model.tokenizer, texts).float().cpu().numpy()
    scores = {}
    if model.smote_k is not None:  # synthetic minority-class embeddings of the trained encoder, for the head only
        vectors, labels, synthetic = smote_embeddings(vectors, labels, model.smote_k)
        scores["smote_synthetic"] = int(synthetic.sum())
    head = fit_head(vectors, [str(y) for y in labels], c=model.head_c)
    for split, (split_texts, split_labels) in model.labelled.items():
        if split_texts:
            predicted = head.predict(encode(model.encoder, model.tokenizer, split_texts).float().cpu().numpy())
            right = sum(p == y for p, y in zip(predicted, split_labels, strict=True))
            scores[f"{split}_accuracy"], scores[f"{split}_examples"] = right / len(split_labels), len(split_labels)
    head.save(folder, scores)


OBJECTIVE = Objective(
    name="setfit",
    loss=setfit_loss,
    config=SetFitConfig,
    prepare=prepare_setfit,
    setup=_setup,
    collate=collate_setfit,
    length=embed_length,
    count=count_anchors,
    metric="pair_acc",
    perplexity=False,
    body=_body,
    save_extra=_save_head,
)
