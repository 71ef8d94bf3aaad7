"""Token attributions: which input tokens a generated answer (or a classifier's label) rests on.

Three methods, all over the same tokens:
- `ig`, integrated gradients (Sundararajan et al. 2017) on the input embeddings, by captum: the gradient of the
  target score averaged along the straight path from a baseline to the input, times the input minus the baseline.
  Its attributions add up to score(input) - score(baseline) (completeness); captum's convergence delta is how far
  the Riemann sum is from that, and is reported.
- `ixg`, input x gradient on the embeddings (captum): one backward pass, cheaper and noisier.
- `rollout`, attention rollout (Abnar & Zuidema 2020): head-averaged attention plus the residual identity,
  multiplied through the layers; it needs the attention weights, so the model runs with eager attention.

The target score of an answer is its log-probability given the prompt: summed over the answer's tokens, or one
answer token at a time (`per_token`); of a label, the log-softmax of that label (a regression head: its value).
The baseline replaces the prompt's and answer's tokens by the pad token (or, when its embedding is zero, a neutral
token: `baseline_token`) and keeps the chat template's, so the template's structure is not what gets the credit.

Captum is used rather than hand-written gradients (DESIGN.md: built on the field's own libraries); the rollout is
a few lines of matrix products that no maintained library ships for decoder models.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.core.errors import ConfigError, DataError
from tunelab.core.files import write_text
from tunelab.core.types import Message
from tunelab.models.chat import prompt_text
from tunelab.models.generate import generate_answers
from tunelab.models.load import pad_id
from tunelab.models.parts import base_model, body, input_embeddings
from tunelab.objectives.classify.heads import TaskModel

ExplainMethod = Literal["ig", "ixg", "rollout"]
Part = Literal["template", "prompt", "answer"]
METHODS: tuple[ExplainMethod, ...] = ("ig", "ixg", "rollout")
Forward = Callable[[torch.Tensor], torch.Tensor]
IG_TOLERANCE = 0.01
"""Integrated gradients is rerun with more steps until |convergence delta| <= 1% of the score difference."""
MAX_IG_STEPS = 1024


@dataclass
class Explanation:
    """Attributions of one target over the input tokens, with what they explain."""

    method: ExplainMethod
    kind: Literal["answer", "label"]
    tokens: list[str]
    """Every input token as text (prompt, then the answer tokens before the last)."""
    parts: list[Part]
    """Where each token comes from: the chat template's special tokens, the prompt, or the answer."""
    scores: list[float]
    """Attribution of each token to the whole target (summed over the answer's tokens)."""
    target: str
    target_tokens: list[str]
    per_target: list[list[float]] = field(default_factory=list)
    """With per_token: one row of attributions per answer token (over every input token)."""
    score: float = math.nan
    """The target score of the input: log p(answer | prompt), or the label's log-probability."""
    baseline_score: float | None = None
    """The same score with the baseline input (ig only)."""
    delta: float | None = None
    """ig: captum's convergence delta, sum(attributions) - (score - baseline_score); the largest over targets."""
    steps: int | None = None
    """ig: the integration steps used (more than asked when the delta was too large)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def explain_answer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    method: ExplainMethod = "ig",
    *,
    target: str | None = None,
    per_token: bool = False,
    steps: int = 50,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
) -> Explanation:
    """Attributions of a causal LM's answer to `prompt` over the prompt's tokens (and the answer's own earlier
    tokens). `target` is the answer to explain; by default the model's greedy answer."""
    messages = [Message("user", prompt)]
    if target is None:
        target = generate_answers(model, tokenizer, [messages], max_new_tokens=max_new_tokens,
                                  system_prompt=system_prompt, show_progress=False)[0]  # fmt: skip
        if not target:
            raise DataError("The model's answer to the prompt is empty, so there is nothing to explain: give the "
                            "answer to explain with --target.")  # fmt: skip
    rendered = prompt_text(tokenizer, messages, system_prompt)
    prompt_ids = _ids(tokenizer, rendered)
    answer_ids = _ids(tokenizer, target)
    if not answer_ids:
        raise DataError("--target is empty: give the answer text whose tokens should be explained.")
    ids = torch.tensor([prompt_ids + answer_ids])
    _check_length(model, ids.shape[1])
    start = len(prompt_ids)
    answer = torch.tensor(answer_ids)

    def forward(x: torch.Tensor) -> torch.Tensor:  # B x answer tokens: each answer token's log-probability
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, start - 1 :].float()
        picked = answer.to(x.device).expand(x.shape[0], -1)[..., None]
        return torch.log_softmax(logits, -1).gather(-1, picked)[..., 0]

    inputs = ids[:, :-1]  # the last answer token is predicted, never read
    answer_parts: list[Part] = ["answer"] * (inputs.shape[1] - start)
    parts = _prompt_parts(tokenizer, rendered, prompt) + answer_parts
    targets: list[int | None] = list(range(len(answer_ids))) if per_token else [None]
    rows = [start - 1 + k for k in range(len(answer_ids))]
    baseline = _baseline(inputs, parts, baseline_token(model, tokenizer))
    result = _attribute(model, forward, inputs, method, targets, rows, steps, baseline)
    return Explanation(method, "answer", pieces(tokenizer, inputs[0].tolist()), parts, target=target,
                       target_tokens=pieces(tokenizer, answer_ids), **result)  # fmt: skip


def explain_label(
    model: TaskModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    method: ExplainMethod = "ig",
    *,
    target: str | None = None,
    steps: int = 50,
) -> Explanation:
    """Attributions of a classifier's label (by default the predicted one; `target`: a label name or id) over the
    tokens of `text`. A regression head explains its value."""
    if model.cfg.task == "token":
        raise ConfigError("tunelab explain attributes a sequence label; this run tags every token (task=token). "
                          "Explain a sequence classifier or a generator.")  # fmt: skip
    ids = torch.tensor([_ids(tokenizer, text, special=True)])
    _check_length(model, ids.shape[1])
    regression = model.cfg.problem == "regression"

    def forward(x: torch.Tensor) -> torch.Tensor:  # B x labels: log-probabilities (a regression head: its value)
        out = model(x, torch.ones_like(x)).float()
        return out if regression else torch.log_softmax(out, -1)

    with torch.no_grad():
        scores = forward(ids.to(_device(model)))[0]
    label = 0 if regression else _label_index(model, target, int(scores.argmax()))
    names = model.cfg.labels
    shown = "value" if regression else (names[label] if names else str(label))
    specials = set(tokenizer.all_special_ids)
    parts: list[Part] = ["template" if t in specials else "prompt" for t in ids[0].tolist()]
    last = ids.shape[1] - 1
    rows = [last] if model.pooling == "last" else list(range(ids.shape[1]))
    baseline = _baseline(ids, parts, baseline_token(model, tokenizer))
    result = _attribute(
        model, forward, ids, method, [label], rows, steps, baseline, average_rows=model.pooling != "last"
    )
    result["per_target"] = []
    return Explanation(method, "label", pieces(tokenizer, ids[0].tolist()),
                       parts, target=shown, target_tokens=[shown],
                       **result)  # fmt: skip


def _label_index(model: TaskModel, target: str | None, predicted: int) -> int:
    if target is None:
        return predicted
    names = model.cfg.labels
    if target in names:
        return names.index(target)
    if target.isdigit() and int(target) < model.cfg.num_labels:
        return int(target)
    known = ", ".join(names) if names else f"0..{model.cfg.num_labels - 1}"
    raise ConfigError(f"--target {target!r} is not a label of this classifier (its labels: {known}).")


def _attribute(
    model: nn.Module,
    forward: Forward,
    inputs: torch.Tensor,
    method: ExplainMethod,
    targets: list[int | None],
    rows: list[int],
    steps: int,
    baseline: torch.Tensor,
    average_rows: bool = False,
) -> dict[str, Any]:
    """scores (summed over `targets`), per_target rows when there are several, score, baseline_score and delta.
    A target of None is the sum over every output column. `rows` are the positions whose outputs make each target
    (the rollout reads their attention rows)."""
    device = _device(model)
    inputs, baseline = inputs.to(device), baseline.to(device)
    with torch.no_grad():
        out = forward(inputs)[0]
    score = [float(out.sum()) if t is None else float(out[t]) for t in targets]
    if method == "rollout":
        matrix = attention_rollout(model, inputs)
        per = [_rollout_row(matrix, rows, t, average_rows) for t in targets]
        extra: dict[str, Any] = {}
    else:
        per, extra = _gradient_method(model, forward, inputs, method, targets, steps, baseline)
    total = [sum(col) for col in zip(*per, strict=True)]
    return {"scores": total, "per_target": per if len(targets) > 1 else [], "score": sum(score), **extra}


def _gradient_method(
    model: nn.Module,
    forward: Forward,
    inputs: torch.Tensor,
    method: ExplainMethod,
    targets: list[int | None],
    steps: int,
    baseline: torch.Tensor,
) -> tuple[list[list[float]], dict[str, Any]]:
    """Per target, each token's attribution summed over the embedding width; for ig the baseline score, the
    largest convergence delta and the steps it took."""
    layer = input_embeddings(model)
    per, deltas, used = [], [], []
    with torch.enable_grad():
        for column in targets:
            fn = cast(Callable[..., torch.Tensor], lambda x, c=column: _column(forward(x), c))
            if method == "ig":
                attr, delta, n = _converged_ig(LayerIntegratedGradients(fn, layer), inputs, baseline, steps)
                deltas.append(delta)
                used.append(n)
            else:
                attr = LayerGradientXActivation(fn, layer).attribute(inputs)
            per.append(cast(torch.Tensor, attr)[0].sum(-1).detach().float().cpu().tolist())
    if method != "ig":
        return per, {}
    with torch.no_grad():
        base = forward(baseline)[0]
    base_score = sum(float(base.sum()) if t is None else float(base[t]) for t in targets)
    return per, {"baseline_score": base_score, "delta": max(deltas), "steps": max(used)}


def _column(out: torch.Tensor, column: int | None) -> torch.Tensor:
    return out.sum(-1) if column is None else out[:, column]


def _converged_ig(
    ig: LayerIntegratedGradients, inputs: torch.Tensor, baseline: torch.Tensor, steps: int
) -> tuple[torch.Tensor, float, int]:
    """Integrated gradients with `steps`, then 4x as many until the convergence delta is within
    IG_TOLERANCE of the score difference (RMS norms make the path steep near the baseline, where few steps miss
    most of the change), at most MAX_IG_STEPS. Returns the attributions, |delta| and the steps used."""
    while True:
        attr, delta = ig.attribute(inputs, baselines=baseline, n_steps=steps, internal_batch_size=min(steps, 16),
                                   return_convergence_delta=True)  # fmt: skip
        attr, delta = cast(torch.Tensor, attr), float(cast(torch.Tensor, delta).sum())
        difference = abs(float(attr.sum()) - delta)  # delta = sum(attr) - (f(x) - f(baseline))
        if abs(delta) <= IG_TOLERANCE * max(difference, 0.1) or steps >= MAX_IG_STEPS:
            return attr, abs(delta), steps
        steps = min(4 * steps, MAX_IG_STEPS)


def attention_rollout(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """T x T rollout of the attention of the transformers model inside `model`: per layer the head-averaged
    attention, half mixed with the identity for the residual stream and rows renormalised, multiplied from the
    first layer up. Row i says how much of position i's final state each input position makes."""
    with eager_attention(model), torch.no_grad():
        out = body(model)(input_ids=inputs, attention_mask=torch.ones_like(inputs), output_attentions=True)
    layers = [a[0].float().mean(0) for a in out.attentions]  # each T x T
    eye = torch.eye(inputs.shape[1], device=inputs.device)
    rollout = eye
    for attention in layers:
        mixed = 0.5 * attention + 0.5 * eye
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    return rollout.cpu()


def _rollout_row(matrix: torch.Tensor, rows: list[int], target: int | None, average: bool) -> list[float]:
    """The rollout rows behind a target: its own row (an answer token or the pooled last token), or the mean of
    `rows` (the whole answer; a mean-pooled label)."""
    picked = matrix[rows].mean(0) if target is None or average else matrix[rows[target]]
    return picked.tolist()


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the transformers model inside `model` with eager attention (the only kind that returns its weights),
    then put back the implementation it had."""
    hf = next((m for m in base_model(model).modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None:
        raise ConfigError(f"Attention rollout needs a transformers model; {type(model).__name__} is not one.")
    before = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before is not None:
            hf.set_attn_implementation(before)


def pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """Each token id as the text it stands for (special tokens as their names)."""
    return [cast(str, tokenizer.decode([t])) for t in ids]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _prompt_parts(tokenizer: PreTrainedTokenizerBase, rendered: str, content: str) -> list[Part]:
    """For each token of the rendered prompt: `prompt` when it lies in the user's text, else `template` (special
    tokens, role names, the system prompt). Without character offsets (a slow tokenizer), every ordinary token is
    `prompt`."""
    specials = set(tokenizer.all_special_ids)
    begin = rendered.rfind(content)
    if not tokenizer.is_fast or begin < 0:
        return ["template" if t in specials else "prompt" for t in _ids(tokenizer, rendered)]
    end = begin + len(content)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    return ["prompt" if a < end and b > begin and t not in specials else "template"
            for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]  # fmt: skip


def baseline_token(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int:
    """The token every prompt and answer token becomes in the baseline: the pad token, unless its embedding is
    (nearly) zero, as a padding_idx row is. RMS and layer norms are scale-invariant, so the path from a zero vector
    jumps at its start and integrated gradients would need thousands of steps; then the ordinary token nearest
    the mean embedding stands in (a neutral token that is not zero)."""
    table = cast(nn.Embedding, input_embeddings(model)).weight.detach().float()
    pad = pad_id(tokenizer)
    norms = table.norm(dim=-1)
    if norms[pad] >= 0.1 * norms.median():
        return pad
    distance = (table - table.mean(0)).norm(dim=-1)
    distance[torch.tensor(tokenizer.all_special_ids, dtype=torch.long)] = math.inf
    distance[norms < 0.1 * norms.median()] = math.inf
    return int(distance.argmin())


def _baseline(inputs: torch.Tensor, parts: list[Part], pad: int) -> torch.Tensor:
    """The input with the prompt's and answer's tokens replaced by the pad token (the template's kept)."""
    keep = torch.tensor([[p == "template" for p in parts]], dtype=torch.bool)
    return torch.where(keep, inputs, torch.full_like(inputs, pad))


def _check_length(model: nn.Module, length: int) -> None:
    config = getattr(base_model(model), "config", None) or getattr(body(model), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise DataError(f"The prompt and answer are {length} tokens, longer than the model's context ({limit}). "
                        "Shorten the prompt (or the --target).")  # fmt: skip


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def colour(value: float, scale: float) -> str:
    """A background colour for an attribution: red for positive, blue for negative, white for none."""
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    fade = round(255 * (1 - 0.75 * strength))
    return f"#ff{fade:02x}{fade:02x}" if value >= 0 else f"#{fade:02x}{fade:02x}ff"


def heat_spans(tokens: list[str], scores: list[float], parts: Sequence[str] | None = None) -> str:
    """The tokens as HTML spans coloured by their score (the largest |score| is full colour); title: the value."""
    scale = max((abs(s) for s in scores), default=0.0)
    spans = []
    for k, (token, value) in enumerate(zip(tokens, scores, strict=True)):
        part = parts[k] if parts else "prompt"
        text = html.escape(token).replace("\n", "↵<br>")
        spans.append(f'<span class="tok {part}" style="background:{colour(value, scale)}" '
                     f'title="{value:+.4f}">{text}</span>')  # fmt: skip
    return "".join(spans)


def explanation_html(result: Explanation, prompt: str) -> str:
    """A self-contained HTML page: the summed heat map, one row per answer token when per-token, the numbers."""
    rows = "".join(
        f"<tr><th>{html.escape(t)}</th><td>{heat_spans(result.tokens, row, result.parts)}</td></tr>"
        for t, row in zip(result.target_tokens, result.per_target, strict=bool(result.per_target))
    )
    per_token = f"<h2>Per answer token</h2><table>{rows}</table>" if rows else ""
    numbers = f"score {result.score:.4f}"
    if result.baseline_score is not None and result.delta is not None:
        numbers += (f"; baseline score {result.baseline_score:.4f}; sum of attributions {sum(result.scores):.4f}; "
                    f"convergence delta {result.delta:.2e}")  # fmt: skip
    what = "log p(answer | prompt)" if result.kind == "answer" else f"log p({result.target})"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab explain</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}} .tok{{font-family:monospace;padding:1px 0;
white-space:pre-wrap;border-radius:2px}} .template{{opacity:.45}} .answer{{text-decoration:underline dotted}}
th{{text-align:right;font-family:monospace;padding-right:1em;vertical-align:top}} td{{padding:2px}}
.legend span{{padding:2px 8px;font-family:monospace}}</style></head><body>
<h1>Token attributions ({html.escape(result.method)})</h1>
<p><b>Prompt</b>: {html.escape(prompt)}<br><b>Explained</b>: {html.escape(result.target)} — {html.escape(what)}</p>
<p class="legend"><span style="background:{colour(1, 1)}">supports</span>
<span style="background:{colour(-1, 1)}">opposes</span> (hover a token for its value; faded: template tokens,
dotted: answer tokens)</p>
<div>{heat_spans(result.tokens, result.scores, result.parts)}</div>{per_token}
<p>{numbers}</p></body></html>"""


def write_explanation(result: Explanation, prompt: str, path: str | Path) -> Path:
    """Write the HTML heat map to `path` (and the numbers beside it as JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, explanation_html(result, prompt))
    write_text(path.with_suffix(".json"), json.dumps(result.to_json(), indent=2))
    return path
