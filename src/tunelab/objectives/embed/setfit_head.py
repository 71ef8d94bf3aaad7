"""SetFit (Tunstall et al. 2022) for tiny labelled sets: contrastive pairs fine-tune a sentence encoder, then a
logistic-regression head classifies its embeddings.

Phase 1 (the `setfit` objective, tunelab.objectives.setfit, run by the shared loop): pairs of labelled texts,
same label -> target cosine 1, different labels -> 0, loss the squared error of the pair's cosine (SetFit's
CosineSimilarityLoss). With n texts a class there are O(n²) pairs, which is why 8 examples a class are enough to
move the encoder. Phase 2 (`fit_head`, at save time): scikit-learn's LogisticRegression on the normalised
embeddings of the training texts; its coefficients are saved as JSON next to the encoder (`setfit_head.json`), so
prediction needs only numpy.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError, ModelError
from tunelab.models.load import load_model, load_tokenizer
from tunelab.models.pooling import encode

HEAD_FILE = "setfit_head.json"


def contrastive_pairs(labels: Sequence[str], pairs_per_text: int, seed: int = 0) -> list[tuple[int, int, float]]:
    """(i, j, target) index pairs: for every text, `pairs_per_text` rounds of one same-label partner (target 1)
    and one other-label partner (target 0), as SetFit's `num_iterations` samples them. Seeded."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    if len(by_label) < 2:
        raise DataError(
            f"SetFit needs at least two labels to contrast; the training rows have only {sorted(by_label)}. "
            "Give classification rows of two or more classes."
        )
    rng = random.Random(seed)
    pairs: list[tuple[int, int, float]] = []
    for _ in range(pairs_per_text):
        for i, label in enumerate(labels):
            same = [j for j in by_label[label] if j != i]
            if same:
                pairs.append((i, rng.choice(same), 1.0))
            other = rng.choice([lab for lab in by_label if lab != label])
            pairs.append((i, rng.choice(by_label[other]), 0.0))
    return pairs


def cosine_pair_loss(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed squared error between cos(a, b) and the target (1 same label, 0 different), and how many pairs
    land on the right side of 0.5."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)
    correct = ((cos > 0.5) == (target > 0.5)).sum()
    return ((cos - target) ** 2).sum(), correct


@dataclass
class SetFitHead:
    """A multinomial logistic regression over unit-length embeddings: softmax(x @ coef.T + intercept)."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors @ self.coef.T + self.intercept
        if len(self.classes) == 2 and self.coef.shape[0] == 1:  # sklearn keeps one row for two classes
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.probabilities(vectors).argmax(axis=1)]

    def save(self, folder: Path, extra: dict | None = None) -> Path:
        path = folder / HEAD_FILE
        data = {"classes": self.classes, "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}
        path.write_text(json.dumps({**data, **(extra or {})}, indent=1))
        return path

    @classmethod
    def load(cls, folder: Path) -> SetFitHead:
        path = folder / HEAD_FILE
        if not path.is_file():
            raise ModelError(f"'{folder}' has no {HEAD_FILE}: it is not the result of an `objective: setfit` run.")
        data = json.loads(path.read_text())
        return cls(data["classes"], np.asarray(data["coef"]), np.asarray(data["intercept"]))


def fit_head(vectors: np.ndarray, labels: Sequence[str], c: float = 1.0, seed: int = 0) -> SetFitHead:
    """Logistic regression (L2, strength 1/c) on the embeddings, as SetFit's default head."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(vectors, list(labels))
    return SetFitHead([str(x) for x in classifier.classes_], classifier.coef_, classifier.intercept_)


class SetFitClassifier:
    """A trained SetFit model: the fine-tuned encoder and its head, loaded from a run's saved folder."""

    def __init__(self, encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, head: SetFitHead) -> None:
        self.encoder, self.tokenizer, self.head = encoder, tokenizer, head

    @classmethod
    def load(cls, folder: str | Path) -> SetFitClassifier:
        folder = Path(folder)
        head = SetFitHead.load(folder)
        return cls(load_model(str(folder)), load_tokenizer(str(folder)), head)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        vectors = encode(self.encoder, self.tokenizer, texts, batch_size=batch_size)
        return self.head.predict(vectors.float().cpu().numpy())
