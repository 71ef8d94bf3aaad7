"""Sentence embeddings from an encoder (e.g. the embedded all-MiniLM-L6-v2): mean pooling, then L2 norm.

That is the pooling sentence-transformers uses for the MiniLM family, so vectors match theirs. Requests run one
at a time under a lock, in a worker thread, in batches of `batch_size` texts.
"""

from __future__ import annotations

import threading
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from tunelab.models.pooling import mean_pool
from tunelab.serve.errors import APIError
from tunelab.serve.token_ids import token_id_problem


class Embedder:
    """Turns texts (or token-id lists) into unit-length vectors."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        self.dimensions = int(cast(PreTrainedConfig, model.config).hidden_size)  # a transformers encoder
        # Ids index the embedding table; the tokenizer may know fewer tokens than the table has rows.
        table = cast(nn.Embedding, cast(PreTrainedModel, model).get_input_embeddings())
        self.vocab_size = min(len(tokenizer), int(table.num_embeddings))
        self._lock = threading.Lock()

    def check_ids(self, value: object) -> None:
        """Raise a 400 naming the first token id in `value` (a request's `input`, as sent) that is not in the
        vocabulary; texts pass."""
        problem = token_id_problem(value, self.vocab_size)
        if problem is not None:
            raise APIError(400, problem, param="input", code="invalid_token_id")

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """(one vector per input, in order; prompt tokens counted). Token ids outside the vocabulary are a 400."""
        self.check_ids(inputs)
        vectors: list[list[float]] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start : start + self.batch_size]
                batch = self._encode(chunk)
                tokens += int(batch["attention_mask"].sum())
                hidden = self.model(**batch).last_hidden_state.float()
                pooled = mean_pool(hidden, batch["attention_mask"])
                vectors.extend(F.normalize(pooled, dim=-1).tolist())
        return vectors, tokens

    def _encode(self, chunk: list[str] | list[list[int]]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        if chunk and isinstance(chunk[0], list):
            ids = [list(x)[: self.max_length] for x in cast(list[list[int]], chunk)]
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        else:
            batch = self.tokenizer(
                cast(list[str], chunk), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
