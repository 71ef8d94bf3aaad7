"""Drift and quality signals of live traffic against a reference sample (the run's training data): pure functions
of texts and vectors, each with what a reader needs to judge it.

- Lengths: the two-sample Kolmogorov-Smirnov test (statistic D and its asymptotic p-value).
- Characters: the share of each script class (Latin, digits, Cyrillic, CJK, ...) and the total variation
  distance between two such profiles: a new language or a flood of symbols moves it, a new topic does not.
- Vocabulary: the share of live word tokens never seen in the reference.
- Embeddings: the kernel maximum mean discrepancy (Gretton et al. 2012) with a Gaussian kernel whose width is the
  median pairwise distance, and a permutation p-value: the share of random relabellings of the pooled sample
  whose MMD is at least the observed one. Under no drift the p-value is uniform, so a threshold alpha raises a
  false alarm in a fraction alpha of windows.
- Answers: empty answers, refusals (the usual English phrasings) and, where the references are JSON, answers that
  do not parse.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

CHAR_CLASSES = ("latin", "digit", "space", "punct", "latin_ext", "cyrillic", "greek", "cjk", "arabic", "other")
_WORD = re.compile(r"\w+", re.UNICODE)
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, (but )?i|i can(?:no|')t|i cannot|i won'?t|i am unable|i'?m unable|"
    r"as an ai|i'?m not able|i am not able)",
    re.IGNORECASE,
)
_SCRIPTS = (("CYRILLIC", "cyrillic"), ("GREEK", "greek"), ("CJK", "cjk"), ("HIRAGANA", "cjk"),
            ("KATAKANA", "cjk"), ("HANGUL", "cjk"), ("ARABIC", "arabic"), ("LATIN", "latin_ext"))  # fmt: skip


def char_class(char: str) -> str:
    """The script class of one character (ASCII letters are `latin`, accented Latin letters `latin_ext`)."""
    if char.isascii():
        if char.isalpha():
            return "latin"
        if char.isdigit():
            return "digit"
        return "space" if char.isspace() else "punct"
    if char.isspace():
        return "space"
    if char.isdigit():
        return "digit"
    name = unicodedata.name(char, "")
    for prefix, kind in _SCRIPTS:
        if name.startswith(prefix):
            return kind
    return "punct" if unicodedata.category(char).startswith(("P", "S")) else "other"


def charset_profile(texts: Iterable[str]) -> dict[str, float]:
    """The share of all characters of `texts` in each class of CHAR_CLASSES (zeros for no text)."""
    counts = Counter(char_class(c) for text in texts for c in text)
    total = sum(counts.values())
    return {k: counts[k] / total if total else 0.0 for k in CHAR_CLASSES}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Half the L1 distance between two distributions over the same keys: 0 equal, 1 disjoint."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def unseen_rate(vocabulary: set[str], texts: Iterable[str]) -> float:
    """The share of the word tokens of `texts` that are not in `vocabulary` (0 for no tokens)."""
    tokens = [w for text in texts for w in words(text)]
    return sum(w not in vocabulary for w in tokens) / len(tokens) if tokens else 0.0


def ks_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, p-value), the p-value from the limiting distribution with Stephens'
    small-sample correction (Numerical Recipes' `kstwo`)."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(x) == 0 or len(y) == 0:
        return 0.0, 1.0
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / len(x) - np.searchsorted(y, grid, "right") / len(y))))
    en = math.sqrt(len(x) * len(y) / (len(x) + len(y)))
    return d, _kolmogorov_q((en + 0.12 + 0.11 / en) * d)


def _kolmogorov_q(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum (-1)^(j-1) exp(-2 j^2 lam^2)."""
    if lam < 1e-3:
        return 1.0
    total = sum(2 * (-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return min(1.0, max(0.0, total))


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> tuple[float, float]:
    """Kernel two-sample test of samples `x` (n, d) and `y` (m, d): (MMD^2, permutation p-value).

    The (biased) MMD^2 is w' K w with w = +1/n on x's rows and -1/m on y's, so all permutations are evaluated
    as one matrix product over the pooled kernel matrix."""
    if len(x) < 2 or len(y) < 2:
        return 0.0, 1.0
    pooled = np.concatenate([x, y]).astype(np.float64)
    norms = (pooled**2).sum(1)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = squared[np.triu_indices(len(pooled), 1)]
    width = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-squared / width)
    n, m = len(x), len(y)
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    rng = np.random.default_rng(seed)
    weights = np.stack([base] + [rng.permutation(base) for _ in range(permutations)])
    values = ((weights @ kernel) * weights).sum(1)
    observed = float(values[0])
    p_value = (1 + int(np.sum(values[1:] >= observed - 1e-12))) / (1 + permutations)
    return observed, p_value


def is_empty(answer: str) -> bool:
    return not answer.strip()


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL.match(answer))


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def share(flags: Iterable[bool]) -> float | None:
    """The share of true flags (None when there are none)."""
    values = list(flags)
    return sum(values) / len(values) if values else None
