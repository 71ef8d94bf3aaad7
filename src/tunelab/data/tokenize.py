"""Turn records into token ids and labels: chat with the tokenizer's own chat template, plain text as is.

Which chat tokens carry loss is decided on the rendered text: each assistant turn's character span is found by
rendering the conversation up to that turn (with and without the turn), then the fast tokenizer's offsets map
spans to tokens. This works for any prefix-stable template without special `{% generation %}` markers; a template
that renders a turn differently once more follows it (Qwen3, Phi-3) has the turn located by its content instead.
Plain text (continued pretraining) carries loss on every token and is cut into `max_length` windows, so no
text is lost to truncation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tunelab.core.types import Message
from tunelab.data.chat_shapes import Shape, ShapeRenderer
from tunelab.data.records import Example, Reject
from tunelab.data.token_pieces import IGNORE, TRUST_AFTER, PieceCache, SeamKey, ShapePieces
from tunelab.models.chat import prompt_text, render, with_system

LossOn = Literal["assistant", "last", "all"]
Truncation = Literal["right", "left", "reject"]


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss is taken (not yet shifted)."""
    origin: str
    task: str = ""
    label: str | None = None
    seq_lens: list[int] | None = None
    """For a packed sequence: the lengths of the examples packed into it, in order (positions restart at each)."""
    truncated: bool = False
    difficulty: float | None = None
    """A difficulty given with the row (for curricula)."""

    @property
    def target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


class TemplateError(ValueError):
    """The chat template renders a conversation differently depending on what follows (not prefix-stable)."""


def loss_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message], loss_on: LossOn) -> tuple[str, list]:
    """The rendered conversation and the character spans that carry loss."""
    full = render(tokenizer, messages)
    if loss_on == "all":
        return full, [(0, len(full))]
    spans: list[tuple[int, int]] = []
    for k in loss_turns(messages, loss_on):
        before = render(tokenizer, messages[:k], add_generation_prompt=True)
        upto = full if k == len(messages) - 1 else render(tokenizer, messages[: k + 1])
        if full.startswith(upto) and upto.startswith(before):
            # The turn's text includes its end-of-turn token (so the model learns to stop), not the newline after.
            spans.append((len(before), len(upto.rstrip())))
        else:
            at = spans[-1][1] if spans else 0
            spans.append(_located_span(tokenizer, full, before, upto, messages[k].content, at))
    return full, spans


def _located_span(
    tokenizer: PreTrainedTokenizerBase, full: str, before: str, upto: str, content: str, after: int
) -> tuple[int, int]:
    """An assistant turn's span in a template that renders a turn differently once more follows it: Qwen3 drops
    the empty reasoning block of every turn but the last, Phi-3 ends only a finished conversation with its
    end-of-text token. The span starts where the generation prompt ends (what the model is asked to continue at
    inference) and ends after the turn's end-of-turn text: the tokens that follow its content both when the turn
    is last and inside the whole conversation (whole tokens: `<|end|>` then `<|user|>` or `<|endoftext|>` share
    `<|` as text, not as a token), without trailing whitespace. Raises TemplateError when the generation prompt
    does not begin the whole conversation or the content is not found in it."""
    start = len(before)
    at = full.find(content, start) if full.startswith(before) and start >= after else -1
    alone = upto.find(content, _shared(before, upto))
    if at < 0 or alone < 0:
        raise TemplateError("the chat template is not prefix-stable")
    end = at + len(content)
    follows = [tokenizer(text[:256], add_special_tokens=False, return_offsets_mapping=True)
               for text in (full[end:], upto[alone + len(content) :])]  # fmt: skip
    same = _shared(follows[0]["input_ids"], follows[1]["input_ids"])
    marker = full[end : end + follows[0]["offset_mapping"][same - 1][1]] if same else ""
    return start, end + len(marker.rstrip())


def _shared(a: Sequence, b: Sequence) -> int:
    """How long the common prefix of two sequences is."""
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def loss_turns(messages: list[Message], loss_on: LossOn) -> list[int]:
    """Indices of the assistant turns that carry loss ("all" takes the whole text instead: none listed)."""
    if loss_on == "all":
        return []
    turns = [k for k, m in enumerate(messages) if m.role == "assistant" and m.trainable]
    return turns[-1:] if loss_on == "last" else turns


def token_length(example: Example, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = None) -> int:
    """How many tokens the record takes (chat: after the chat template; preference: prompt plus the longer
    answer; classification: the text and its pair; pairs: the longest text)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    if example.kind == "chat":
        return count(render(tokenizer, with_system(example.messages, system_prompt)))
    if example.kind == "preference":
        prompt = prompt_text(tokenizer, example.messages, system_prompt)
        return count(prompt) + max(count(example.chosen), count(example.rejected))
    if example.kind == "pairs":
        return max(count(t) for t in (example.anchor, example.positive, example.negative))
    return count(example.text) + (count(example.text_pair) if example.text_pair else 0)


def tokenize_example(
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    loss_on: LossOn = "assistant",
    system_prompt: str | None = None,
    truncation: Truncation = "right",
) -> Tokenized:
    """Token ids and labels for one conversation, fit to `max_length` by `truncation`. Raises ValueError when
    the policy rejects it or nothing trainable is left."""
    text, spans = loss_spans(tokenizer, with_system(example.messages, system_prompt), loss_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    return _fit(example, ids, _span_labels(ids, enc["offset_mapping"], spans), max_length, truncation)


def _span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels that copy the ids of tokens overlapping a loss span, IGNORE elsewhere."""
    labels = [IGNORE] * len(ids)
    span_iter = iter(sorted(spans))
    span = next(span_iter, None)
    for i, (start, end) in enumerate(offsets):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if span is not None and end > span[0] and start < span[1]:
            labels[i] = ids[i]
    return labels


def _span_labels_np(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """`_span_labels` with numpy: a token carries loss when it overlaps any span."""
    if not ids:
        return []
    bounds = np.asarray(offsets)
    ranges = np.asarray(spans).reshape(-1, 2)
    hit = ((bounds[:, 1:2] > ranges[:, 0]) & (bounds[:, 0:1] < ranges[:, 1])).any(axis=1)
    return np.where(hit, np.asarray(ids), IGNORE).tolist()


def _fit(
    example: Example,
    ids: list[int],
    labels: list[int],
    max_length: int,
    truncation: Truncation,
    targets: int | None = None,
) -> Tokenized:
    """The sequence fit to `max_length`; `targets` (the loss tokens of `labels`, when known) spares counting them."""
    cut = len(ids) > max_length
    if cut and truncation == "reject":
        raise ValueError(f"{len(ids)} tokens, more than data.max_length={max_length} (data.truncation=reject)")
    window = slice(-max_length, None) if truncation == "left" else slice(0, max_length)
    tokenized = Tokenized(
        input_ids=ids[window], labels=labels[window], origin=example.origin, task=example.task, truncated=cut
    )
    if (tokenized.target_tokens if cut or targets is None else targets) == 0:
        raise ValueError(
            f"no answer tokens within data.max_length={max_length} (the row has {len(ids)} tokens); "
            "raise data.max_length, shorten the prompt, or set data.truncation=left"
        )
    return tokenized


def tokenize_text(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: Truncation = "right"
) -> list[Tokenized]:
    """Plain text for continued pretraining: loss on every token, an end-of-text token appended, and cut into
    consecutive `max_length` windows (or rejected when `truncation` is reject)."""
    ids = list(tokenizer(example.text)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if len(ids) > max_length and truncation == "reject":
        raise ValueError(f"{len(ids)} tokens, more than data.max_length={max_length} (data.truncation=reject)")
    windows = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    if len(windows) > 1 and len(windows[-1]) < 2:  # a lone last token has nothing to predict
        windows.pop()
    return [
        Tokenized(input_ids=w, labels=list(w), origin=example.origin, task=example.task, truncated=len(windows) > 1)
        for w in windows
    ]


def tokenize_record(
    example: Example,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    loss_on: LossOn = "assistant",
    system_prompt: str | None = None,
    truncation: Truncation = "right",
) -> list[Tokenized]:
    """Sequences for one chat or text record (a long text gives several); ValueError says why there are none."""
    if example.kind == "text":
        return tokenize_text(example, tokenizer, max_length, truncation)
    if example.kind != "chat":
        raise ValueError(f"{example.kind} records are not tokenized for language modelling")
    return [tokenize_example(example, tokenizer, max_length, loss_on, system_prompt, truncation)]


@dataclass
class ChatCache:
    """What batched chat tokenising learns about a tokenizer and keeps across calls: the template's shapes and the
    shapes' token pieces with their seams' trust. One per tokenizer (a worker process keeps its own)."""

    renderer: ShapeRenderer
    pieces: PieceCache

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerFast) -> ChatCache:
        return cls(ShapeRenderer(tokenizer), PieceCache(tokenizer.backend_tokenizer))


def tokenize_records(
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    loss_on: LossOn = "assistant",
    system_prompt: str | None = None,
    truncation: Truncation = "right",
    cache: ChatCache | None = None,
) -> list[list[Tokenized] | ValueError]:
    """`tokenize_record` for many records at once, each its sequences or the ValueError that rejects it.

    Chat records go through the template's cached shapes and batched calls of the fast tokenizer: rows whose seams
    are trusted are tokenised in pieces (only their contents), the others whole, with character offsets
    (data.token_pieces); the ids and labels are those of one by one. Other records, and every record of a slow
    tokenizer, go one by one. Give `cache` to keep what was learnt about the template across calls."""
    out: list[list[Tokenized] | ValueError] = [ValueError("not tokenized")] * len(examples)
    chats = [i for i, ex in enumerate(examples) if ex.kind == "chat"] if getattr(tokenizer, "is_fast", False) else []
    if chats:
        fast = cast(PreTrainedTokenizerFast, tokenizer)
        batch = _ChatBatch(cache if cache is not None else ChatCache.of(fast), loss_on)
        for i in chats:
            try:
                batch.add(i, with_system(examples[i].messages, system_prompt))
            except ValueError as exc:
                out[i] = exc
        for i, ids, labels, targets in batch.run():
            try:
                out[i] = [_fit(examples[i], ids, labels, max_length, truncation, targets)]
            except ValueError as exc:
                out[i] = exc
    for i in set(range(len(examples))) - set(chats):
        try:
            out[i] = tokenize_record(examples[i], tokenizer, max_length, loss_on, system_prompt, truncation)
        except ValueError as exc:
            out[i] = exc
    return out


_Trial = tuple[ShapePieces, list[SeamKey], list[str]]
"""A row also tokenised in pieces to try its seams: the shape's pieces, the row's seam keys and its contents."""


class _ChatBatch:
    """One call's chat rows: each is tokenised in pieces (trusted seams), whole and compared in pieces (seams on
    trial, up to `TRUST_AFTER` rows a seam), or held until the trials say which (see data.token_pieces)."""

    def __init__(self, cache: ChatCache, loss_on: LossOn) -> None:
        self.cache = cache
        self.loss_on: LossOn = loss_on
        self.backend = cache.pieces.backend
        self.pieced: list[tuple[int, ShapePieces, list[str]]] = []
        self.whole: list[tuple[int, str, list[tuple[int, int]], _Trial | None]] = []
        self.held: list[tuple[int, list[Message], Shape, ShapePieces, list[SeamKey], list[str]]] = []
        self.on_trial: Counter[SeamKey] = Counter()

    def add(self, i: int, messages: list[Message]) -> None:
        """Plan row `i`; raises the ValueError that rejects it (a template that is not prefix-stable)."""
        shape = self.cache.renderer.shape(messages, loss_turns(messages, self.loss_on))
        if shape is None or self.cache.renderer.mode != "blind":
            self._add_whole(i, messages, shape, None)
            return
        pieces = self.cache.pieces.get(shape, self.loss_on == "all")
        texts = [m.content for m in messages]
        keys = pieces.seams(texts)
        if pieces.trusted(keys):
            self.pieced.append((i, pieces, texts))
            return
        trial = pieces.on_trial(keys)
        if trial and all(pieces.trust.get(k, 0) + self.on_trial[k] >= TRUST_AFTER for k in trial):
            self.held.append((i, messages, shape, pieces, keys, texts))  # enough rows already try these seams
            return
        self.on_trial.update(trial)
        self._add_whole(i, messages, shape, (pieces, keys, texts) if trial else None)

    def _add_whole(self, i: int, messages: list[Message], shape: Shape | None, trial: _Trial | None) -> None:
        text, spans = _spans(self.cache.renderer, shape, messages, self.loss_on)
        self.whole.append((i, text, spans, trial))

    def run(self) -> Iterator[tuple[int, list[int], list[int], int | None]]:
        """(row, ids, labels, loss tokens or None when not counted) for every planned row."""
        # The backend's own batch call: what tokenizer(texts) runs, without building a BatchEncoding around it.
        # The backend keeps the padding and truncation of the tokenizer's last call (transformers sets them per call
        # and leaves them); an earlier padded call would pad these rows to the batch's longest, so both are off.
        self.backend.no_padding()
        self.backend.no_truncation()
        yield from self._run_whole()
        for i, messages, shape, pieces, keys, texts in self.held:
            if pieces.trusted(keys):
                self.pieced.append((i, pieces, texts))
            else:
                self._add_whole(i, messages, shape, None)
        yield from self._run_whole()
        contents = [t for _, _, texts in self.pieced for t in texts]
        content_ids = iter(self._ids(contents))
        for i, pieces, texts in self.pieced:
            yield i, *pieces.assemble([next(content_ids) for _ in texts])

    def _run_whole(self) -> Iterator[tuple[int, list[int], list[int], int | None]]:
        rows, self.whole = self.whole, []
        if not rows:
            return
        trials = [t for *_, trial in rows if trial is not None for t in trial[2]]
        trial_ids = iter(self._ids(trials))
        encodings = self.backend.encode_batch([text for _, text, _, _ in rows], add_special_tokens=False)
        for (i, _, spans, trial), enc in zip(rows, encodings, strict=True):
            ids = enc.ids
            if trial is not None:
                pieces, keys, texts = trial
                pieces.record(keys, pieces.assemble([next(trial_ids) for _ in texts])[0] == ids)
            yield i, ids, _span_labels_np(ids, enc.offsets, spans), None

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.cache.pieces.contents.ids(texts)


def _spans(
    renderer: ShapeRenderer, shape: Shape | None, messages: list[Message], loss_on: LossOn
) -> tuple[str, list[tuple[int, int]]]:
    """A conversation's text and loss spans: through its shape where it has one (in a template that inspects
    contents, when the row renders the same), else by the three renders of `loss_spans`."""
    if shape is None:
        return loss_spans(renderer.tokenizer, messages, loss_on)
    text, spans = shape.assemble([m.content for m in messages])
    if renderer.mode == "verified" and render(renderer.tokenizer, messages) != text:
        return loss_spans(renderer.tokenizer, messages, loss_on)
    return text, [(0, len(text))] if loss_on == "all" else spans


def tokenize_all(
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    loss_on: LossOn = "assistant",
    system_prompt: str | None = None,
    truncation: Truncation = "right",
) -> tuple[list[Tokenized], list[Reject]]:
    """Tokenize many examples; the ones that cannot be trained on become rejects with the reason."""
    done: list[Tokenized] = []
    rejects: list[Reject] = []
    for ex, got in zip(
        examples, tokenize_records(examples, tokenizer, max_length, loss_on, system_prompt, truncation), strict=True
    ):
        if isinstance(got, ValueError):
            rejects.append(Reject(origin=ex.origin, reason=str(got), row=str(ex.messages)[:500], stage="tokenize"))
        else:
            done += got
    return done, rejects


def collate(batch: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into input_ids, attention_mask and labels tensors.

    When the batch holds packed sequences (`seq_lens`), `position_ids` restart at 0 for every packed example
    and the padding; give the model `position_ids` and no `attention_mask` (see `model_inputs`), and
    transformers builds the block-diagonal causal mask (or uses varlen flash attention) from them, so packed
    examples never attend to each other. `attention_mask` still marks real tokens, for counting.
    """
    width = max(len(t.input_ids) for t in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, t in enumerate(batch):
        n = len(t.input_ids)
        input_ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        attention[row, :n] = 1
    out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if any(t.seq_lens for t in batch):
        out["position_ids"] = torch.stack([_positions(t.seq_lens or [len(t.input_ids)], width) for t in batch])
    return out


def _positions(seq_lens: list[int], width: int) -> torch.Tensor:
    parts = [torch.arange(n) for n in seq_lens]
    used = sum(seq_lens)
    if used < width:
        parts.append(torch.arange(width - used))  # padding forms its own segment, attending only to itself
    return torch.cat(parts)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments for the model's forward: input_ids with either attention_mask (padded batches) or
    position_ids (packed batches, whose mask transformers derives from where positions restart)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
