"""`tunelab monitor RUN --log DB`: live traffic from the log against the run's training data, window by window.

The reference is what the run was trained on (its config's `data.train` files, read again): the user turns the
model answered and the reference answers. Each window of the log (`window` seconds, aligned to the clock) gets
every signal of `signals` against that reference, the feedback given on its answers, and an alert for each
threshold of `MonitorSection` it crosses. Statistical tests run only in windows with at least `min_requests`
requests (fewer are reported, not judged): with its p-value thresholds at alpha, a window with no drift alerts
on a test with probability alpha.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError

from tunelab.core.duration import seconds
from tunelab.core.errors import ConfigError, DataError
from tunelab.core.schema import Section, explain, read_yaml_mapping
from tunelab.data.load import LoadOptions, load_examples
from tunelab.models.pooling import encoder_vectors
from tunelab.recipes.monitor import signals
from tunelab.recipes.monitor.store import LogContents, LoggedRequest, read_log
from tunelab.recipes.runs import run_config

Encode = Callable[[list[str]], np.ndarray]


class MonitorSection(Section):
    """What the monitor measures and when it alerts (a YAML file of these keys, or `--set key=value`)."""

    window: float = Field(default=3600.0, gt=0)
    """Seconds per window of the log."""
    min_requests: int = Field(default=20, ge=2)
    """Windows with fewer requests are reported but not tested."""
    max_samples: int = Field(default=500, ge=10)
    """Most texts per side that the embedding test encodes (a seeded sample)."""
    permutations: int = Field(default=500, ge=20)
    """Permutations behind the embedding test's p-value (its smallest possible p is 1/(permutations+1))."""
    encoder: str = "minilm-l6"
    """Sentence encoder of the embedding test (the embedded all-MiniLM-L6-v2 by default)."""
    seed: int = 0
    """Seed of the samples and permutations: a report re-runs to the same numbers."""
    embedding_p: float = Field(default=0.01, gt=0, lt=1)
    """Alert when the embedding drift test's p-value is below this."""
    input_length_p: float = Field(default=0.01, gt=0, lt=1)
    """Alert when the input-length KS test's p-value is below this."""
    answer_length_p: float = Field(default=0.001, gt=0, lt=1)
    """Alert when the answer-length KS test's p-value (live answers vs reference answers) is below this."""
    charset_distance: float = Field(default=0.15, gt=0, le=1)
    """Alert when the total variation distance between live and reference character classes exceeds this."""
    unseen_increase: float = Field(default=0.15, gt=0, le=1)
    """Alert when the live unseen-word rate exceeds the reference's own (one half against the other) by this."""
    empty_rate: float = Field(default=0.05, ge=0, le=1)
    """Alert when more than this share of answers is empty."""
    refusal_rate: float = Field(default=0.1, ge=0, le=1)
    """Alert when more than this share of answers is a refusal."""
    json_invalid_rate: float = Field(default=0.05, ge=0, le=1)
    """Alert when more than this share of answers is not JSON (only when the reference answers are JSON)."""
    thumbs_down_rate: float = Field(default=0.3, ge=0, le=1)
    """Alert when more than this share of the window's ratings are thumbs down."""


def monitor_settings(path: Path | None = None, overrides: list[str] | None = None) -> MonitorSection:
    """The settings from a YAML file of MonitorSection's keys (optional) and `key=value` overrides; a mistake is
    a ConfigError naming the key, its line and the closest valid key."""
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"Thresholds file '{path}' does not exist. Check the path.")
        raw, lines = read_yaml_mapping(path, "monitor settings such as embedding_p: 0.01")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE (e.g. embedding_p=0.001); got '{item}'.")
        raw[key.strip()] = yaml.safe_load(value)
    if isinstance(raw.get("window"), str):
        try:
            raw["window"] = seconds(raw["window"])
        except ValueError as exc:
            raise ConfigError(f"window: {exc}.") from None
    try:
        return MonitorSection.model_validate(raw)
    except ValidationError as exc:
        where = str(path) if path is not None else "command line"
        raise ConfigError("\n".join(explain(exc, where, lines, MonitorSection))) from None


@dataclass
class Reference:
    """The training data as the monitor compares with it."""

    inputs: list[str]
    answers: list[str]
    vocabulary: set[str]
    unseen_rate: float
    """The unseen-word rate of one half of the inputs against the other half's vocabulary: the rate expected
    with no drift at all (names, numbers and rare words are always new)."""
    charset: dict[str, float]
    json_answers: bool


@dataclass
class Window:
    start: float
    end: float
    requests: int
    signals: dict[str, Any] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    tested: bool = False


@dataclass
class MonitorResult:
    run: str
    log: str
    reference: dict[str, Any]
    windows: list[Window]
    settings: MonitorSection

    @property
    def alerts(self) -> list[str]:
        return [a for w in self.windows for a in w.alerts]


def reference_of(run_dir: Path) -> Reference:
    """The run's training inputs and answers, read from its config's data files."""
    data = run_config(run_dir).data
    options = LoadOptions(format=data.format, formats=dict(data.formats), text_unit=data.text_unit)
    inputs, answers = [], []
    for example in load_examples(data.train, options=options).examples:
        if example.kind == "chat" and any(m.role == "assistant" for m in example.messages):
            turns, answer = example.prompt_and_answer()
            users = [m.content for m in turns if m.role == "user"]
            inputs.append(users[-1] if users else (turns[-1].content if turns else ""))
            answers.append(answer)
        else:
            inputs.append(example.text or example.anchor or "")
    if not inputs:
        raise DataError(f"The training data of '{run_dir}' ({', '.join(data.train)}) holds no rows to compare with.")
    half = len(inputs) // 2
    seen_first = {w for text in inputs[:half] for w in signals.words(text)}
    json_share = signals.share(signals.is_json(a) for a in answers)
    return Reference(
        inputs=inputs, answers=answers, vocabulary={w for text in inputs for w in signals.words(text)},
        unseen_rate=signals.unseen_rate(seen_first, inputs[half:]) if half else 0.0,
        charset=signals.charset_profile(inputs), json_answers=json_share is not None and json_share >= 0.9,
    )  # fmt: skip


def monitor(
    run_dir: Path, db: str, settings: MonitorSection, since: float | None = None, encode: Encode | None = None
) -> MonitorResult:
    """Every window of the log since `since` (unix time) against the run's training data."""
    reference = reference_of(run_dir)
    log = read_log(db, since=since)
    if not log.requests:
        raise DataError(f"The traffic log '{db}' holds no requests{' in that time' if since else ''} to monitor.")
    windows = split_windows(log, settings.window)
    encode = encode or (lambda texts: encoder_vectors(settings.encoder, texts).numpy())
    vectors = _embed(reference, windows, settings, encode)
    judged = [
        judge_window(w, reqs, fb, reference, settings, (vectors[0], live))
        for (w, reqs, fb), live in zip(windows, vectors[1:], strict=True)
    ]
    summary = {"inputs": len(reference.inputs), "answers": len(reference.answers),
               "input_chars_mean": _mean(len(t) for t in reference.inputs),
               "answer_chars_mean": _mean(len(t) for t in reference.answers), "unseen_rate": reference.unseen_rate,
               "json_answers": reference.json_answers}  # fmt: skip
    return MonitorResult(str(run_dir), db, summary, judged, settings)


Sliced = tuple[Window, list[LoggedRequest], dict[str, int]]


def split_windows(log: LogContents, seconds: float) -> list[Sliced]:
    """The log cut into clock-aligned windows of `seconds` (only windows that hold requests), with the counts
    of feedback given in each on answers of any time."""
    buckets: dict[int, list[LoggedRequest]] = {}
    for request in log.requests:
        buckets.setdefault(math.floor(request.created / seconds), []).append(request)
    out = []
    for key in sorted(buckets):
        start, end = key * seconds, (key + 1) * seconds
        feedback = [f for f in log.feedback if start <= f.created < end]
        counts = {
            "up": sum(f.rating == 1 for f in feedback), "down": sum(f.rating == -1 for f in feedback),
            "corrections": sum(f.correction is not None for f in feedback),
            "choices": sum(start <= p.created < end for p in log.preferences),
        }  # fmt: skip
        out.append((Window(start, end, len(buckets[key])), buckets[key], counts))
    return out


def _embed(reference: Reference, windows: list[Sliced], settings: MonitorSection, encode: Encode) -> list[np.ndarray]:
    """Sentence vectors: the reference sample first, then each window's sample (empty for windows too small to
    test), in one encoder pass."""
    rng = random.Random(settings.seed)
    samples = [_sample(reference.inputs, settings.max_samples, rng)]
    for _, requests, _ in windows:
        tested = len(requests) >= settings.min_requests
        samples.append(_sample([r.prompt for r in requests], settings.max_samples, rng) if tested else [])
    if len(samples[0]) == sum(len(s) for s in samples):  # no window to test: nothing to encode
        return [np.zeros((0, 1))] * len(samples)
    vectors = np.asarray(encode([t for s in samples for t in s]))
    out, at = [], 0
    for s in samples:
        out.append(vectors[at : at + len(s)])
        at += len(s)
    return out


def _sample(texts: list[str], most: int, rng: random.Random) -> list[str]:
    return texts if len(texts) <= most else rng.sample(texts, most)


def judge_window(
    window: Window, requests: list[LoggedRequest], feedback: dict[str, int], reference: Reference,
    settings: MonitorSection, vectors: tuple[np.ndarray, np.ndarray],
) -> Window:  # fmt: skip
    """Fill `window`'s signals and alerts; `vectors`: the reference's and this window's input embeddings."""
    inputs = [r.prompt for r in requests]
    answers = [a for r in requests for a in r.answers]
    found = window.signals
    found["input_chars_mean"] = _mean(len(t) for t in inputs)
    found["charset_distance"] = signals.total_variation(signals.charset_profile(inputs), reference.charset)
    found["unseen_rate"] = signals.unseen_rate(reference.vocabulary, inputs)
    found["answer_chars_mean"] = _mean(len(a) for a in answers)
    found["empty_rate"] = signals.share(signals.is_empty(a) for a in answers)
    found["refusal_rate"] = signals.share(signals.is_refusal(a) for a in answers)
    if reference.json_answers:
        found["json_invalid_rate"] = signals.share(not signals.is_json(a) for a in answers)
    rated = feedback["up"] + feedback["down"]
    found["feedback"] = feedback
    found["feedback_rate"] = sum(feedback.values()) / len(requests)
    found["thumbs_down_rate"] = feedback["down"] / rated if rated else None
    window.tested = len(requests) >= settings.min_requests
    if window.tested:
        found["input_length_ks"], found["input_length_p"] = signals.ks_test(
            [len(t) for t in inputs], [len(t) for t in reference.inputs]
        )
        if reference.answers:
            found["answer_length_ks"], found["answer_length_p"] = signals.ks_test(
                [len(a) for a in answers], [len(a) for a in reference.answers]
            )
        seed = settings.seed + int(window.start // settings.window)
        found["embedding_mmd"], found["embedding_p"] = signals.mmd_test(*vectors, settings.permutations, seed)
    window.alerts = alerts_of(window, reference, settings)
    return window


# (signal, threshold key, "below" or "above", only in tested windows)
RULES = (
    ("embedding_p", "embedding_p", "below", True),
    ("input_length_p", "input_length_p", "below", True),
    ("answer_length_p", "answer_length_p", "below", True),
    ("charset_distance", "charset_distance", "above", True),
    ("empty_rate", "empty_rate", "above", True),
    ("refusal_rate", "refusal_rate", "above", True),
    ("json_invalid_rate", "json_invalid_rate", "above", True),
    ("thumbs_down_rate", "thumbs_down_rate", "above", False),
)


def alerts_of(window: Window, reference: Reference, settings: MonitorSection) -> list[str]:
    """One line per threshold the window crosses, naming the window, the signal, its value and the limit."""
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(window.start))
    lines = []
    for name, key, side, needs_test in RULES:
        value, limit = window.signals.get(name), float(getattr(settings, key))
        if value is None or (needs_test and not window.tested):
            continue
        if (value < limit) if side == "below" else (value > limit):
            sign = "<" if side == "below" else ">"
            lines.append(f"ALERT {when} UTC ({window.requests} requests): {name} {value:.4g} {sign} {limit:g}")
    excess = window.signals["unseen_rate"] - reference.unseen_rate
    if window.tested and excess > settings.unseen_increase:
        lines.append(
            f"ALERT {when} UTC ({window.requests} requests): unseen_rate {window.signals['unseen_rate']:.4g} is "
            f"{excess:.4g} above the training data's own {reference.unseen_rate:.4g} "
            f"(limit +{settings.unseen_increase:g})"
        )
    return lines


def _mean(values) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None
