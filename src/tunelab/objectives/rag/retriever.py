"""A dense retriever: one sentence encoder for questions and passages (mean pooling, L2-normalised, cosine score),
and an index of passage vectors that is recomputed on request.

One encoder for both sides, as in REPLUG (a shared Contriever): when it trains, the passage vectors go stale, and
`refresh_` re-embeds the corpus (the objective does so every `refresh_every` training batches). Saved as a
sentence-transformers folder (Transformer, mean Pooling, Normalize), which plain transformers also loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.core.device import full_precision
from tunelab.core.errors import ModelError
from tunelab.models.load import load_model, resolve_source, tokenizer_from_folder
from tunelab.models.pooling import embed_batch, encode
from tunelab.objectives.rag.data import Passage


class Retriever(nn.Module):
    """The encoder (a submodule, so it can train) plus the passage index (a buffer not saved with the weights)."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        passages: list[Passage],
        *,
        query_max_length: int = 64,
        passage_max_length: int = 128,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.passages = passages
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.register_buffer("index", torch.zeros(0), persistent=False)
        self.stale = True
        """Whether the encoder may have changed since the index was built."""

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def refresh_(self) -> None:
        """Re-embed every passage with the current encoder (no gradients, fp32 even inside a bf16 autocast region,
        so an index built during training ranks exactly like one built for evaluation)."""
        texts = [p.text for p in self.passages]
        with full_precision(self.device):
            vectors = encode(self.encoder, self.tokenizer, texts, max_length=self.passage_max_length)
        self.index = vectors.to(self.device)
        self.stale = False

    def tokenize(self, questions: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            questions, padding=True, truncation=True, max_length=self.query_max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised question vectors (B x D), with gradients when grad mode is on."""
        return F.normalize(embed_batch(self.encoder, input_ids.to(self.device), attention_mask.to(self.device)), dim=-1)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each question vector to every passage (B x N); builds the index when missing."""
        if self.index.numel() == 0:
            self.refresh_()
        return queries @ self.index.T.to(queries.dtype)

    @torch.no_grad()
    def search(self, questions: list[str], k: int) -> torch.Tensor:
        """Passage positions of the top k per question (B x k), best first, with an up-to-date index (fp32, like
        the index, even when called inside a bf16 autocast region)."""
        if self.stale or self.index.numel() == 0:
            self.refresh_()
        was_training = self.encoder.training
        self.encoder.eval()
        out = []
        try:
            with full_precision(self.device):
                for start in range(0, len(questions), 64):
                    enc = self.tokenize(questions[start : start + 64])
                    scores = self.scores(self.embed(enc["input_ids"], enc["attention_mask"]))
                    out.append(scores.topk(min(k, len(self.passages)), dim=-1).indices.cpu())
        finally:
            self.encoder.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def load_retriever(
    spec: str, passages: list[Passage], *, query_max_length: int = 64, passage_max_length: int = 128
) -> Retriever:
    """A retriever over `passages` with the encoder `spec`: an embedded encoder (`minilm-l6`), an encoder folder,
    or a retriever folder saved by a rag run (`<run>/<artifact>/retriever`)."""
    source = resolve_source(spec)
    if source.task != "encoder":
        raise ModelError(
            f"objective.retriever '{spec}' is a causal language model, not a sentence encoder. Give an encoder: "
            "minilm-l6, a folder whose config.json names a bare encoder class (BertModel), or a saved retriever."
        )
    encoder = load_model(source)
    tokenizer = tokenizer_from_folder(source.materialize(), chat=False)
    return Retriever(
        encoder, tokenizer, passages, query_max_length=query_max_length, passage_max_length=passage_max_length
    )


def save_retriever(retriever: Retriever, folder: Path) -> None:
    """The encoder and tokenizer as a sentence-transformers folder: HF weights at the top, plus modules.json,
    1_Pooling (mean) and 2_Normalize, so `SentenceTransformer(folder)` gives the vectors the retriever used."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = cast(PreTrainedModel, retriever.encoder)  # a transformers encoder (load_retriever)
    encoder.save_pretrained(folder)
    retriever.tokenizer.save_pretrained(folder)
    width = int(encoder.config.hidden_size)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": retriever.passage_max_length, "do_lower_case": False}, indent=2)
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": width, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}
    pooling |= {"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)
