"""Embedding similarity of each answer to its reference: the cosine of their sentence vectors from an encoder
(by default the embedded all-MiniLM-L6-v2, `minilm-l6`).

It credits an answer that says the right thing in other words, which exact match and n-gram overlap cannot. It is
opt-in (`tunelab eval --similarity`, `eval.similarity` in a config) because it loads a second model.
"""

from __future__ import annotations

from tunelab.models.pooling import encoder_vectors

DEFAULT_ENCODER = "minilm-l6"


def embedding_similarity(predictions: list[str], references: list[str], encoder: str = DEFAULT_ENCODER) -> list[float]:
    """Per pair: the cosine similarity in [-1, 1] of the prediction's and the reference's normalised vectors.
    Texts are encoded in one pass (references and predictions together)."""
    if len(predictions) != len(references):
        raise ValueError(f"one reference per prediction, got {len(predictions)} and {len(references)}")
    if not predictions:
        return []
    vectors = encoder_vectors(encoder, [*predictions, *references])
    pred, ref = vectors[: len(predictions)], vectors[len(predictions) :]
    return (pred * ref).sum(dim=-1).clamp(-1.0, 1.0).tolist()
