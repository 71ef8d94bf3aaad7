"""Retrieval evaluation on a held-out query set: recall@k, MRR and nDCG@k with binary relevance.

- recall@k: the fraction of a query's relevant documents found in its top k;
- MRR: the mean over queries of 1 / rank of the first relevant document (0 when none is ranked);
- nDCG@k: DCG = Σ_{i<=k} rel_i / log2(i + 1), divided by the DCG of an ideal ranking (min(|relevant|, k) hits
  at the top).
Every score is averaged over queries; a query without relevant documents is an error, not a silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.models.pooling import encode


def retrieval_metrics(
    rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean recall@k, nDCG@k (each k) and MRR of ranked document ids against each query's relevant set."""
    if len(rankings) != len(relevant) or not rankings:
        raise ValueError("give one ranking and one relevant set per query (at least one query)")
    sums: dict[str, float] = {f"recall@{k}": 0.0 for k in ks} | {f"ndcg@{k}": 0.0 for k in ks} | {"mrr": 0.0}
    for q, (ranking, rel) in enumerate(zip(rankings, relevant, strict=True)):
        if not rel:
            raise DataError(f"query {q} has no relevant document; drop it or fix the relevance judgements (qrels).")
        hits = [doc in rel for doc in ranking]
        first = next((i for i, h in enumerate(hits) if h), None)
        sums["mrr"] += 0.0 if first is None else 1.0 / (first + 1)
        for k in ks:
            sums[f"recall@{k}"] += sum(hits[:k]) / len(rel)
            dcg = sum(1.0 / math.log2(i + 2) for i, h in enumerate(hits[:k]) if h)
            ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
            sums[f"ndcg@{k}"] += dcg / ideal
    return {name: total / len(rankings) for name, total in sums.items()}


def rank_documents(queries: torch.Tensor, documents: torch.Tensor, doc_ids: Sequence[str], top: int) -> list[list[str]]:
    """The `top` document ids per query by dot product of (normalised) vectors, best first."""
    scores = queries @ documents.T
    order: list[list[int]] = scores.topk(min(top, len(doc_ids)), dim=1).indices.tolist()
    return [[doc_ids[i] for i in row] for row in order]


def evaluate_retrieval(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    queries: dict[str, str],
    corpus: dict[str, str],
    qrels: dict[str, set[str]],
    *,
    ks: Sequence[int] = (1, 5, 10),
    dims: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Embed queries and corpus with `model`, rank the corpus for each query and score against `qrels`
    (query id -> relevant document ids). `dims` evaluates a Matryoshka-truncated embedding."""
    qids = [q for q in queries if q in qrels]
    if not qids:
        raise DataError("no query has relevance judgements (qrels); nothing to evaluate.")
    doc_ids = list(corpus)
    q_vecs = encode(model, tokenizer, [queries[q] for q in qids], dims=dims, batch_size=batch_size)
    d_vecs = encode(model, tokenizer, [corpus[d] for d in doc_ids], dims=dims, batch_size=batch_size)
    # The whole corpus is ranked, so MRR sees a first hit however deep it is (the score matrix is Q x D anyway).
    rankings = rank_documents(q_vecs, d_vecs, doc_ids, top=len(doc_ids))
    return retrieval_metrics(rankings, [qrels[q] for q in qids], ks)
