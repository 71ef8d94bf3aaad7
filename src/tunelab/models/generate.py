"""Generate answers with a model's own chat template: greedy batches for evaluation, a token stream for chat.

Works for a plain transformers model and for a peft-wrapped one (both expose `generate`). The caller's model
and tokenizer come back as they were: the model's train/eval mode is restored and the tokenizer is never
changed (left padding is asked for per call, not set on the tokenizer).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Literal, Protocol, cast

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import nn
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from tunelab.core.device import eval_mode
from tunelab.core.types import Message
from tunelab.models.chat import prompt_text
from tunelab.models.load import pad_id

Precision = Literal["bf16", "fp32"]

# The ChatML end-of-turn token. A tokenizer whose eos is <|endoftext|> but whose template is ChatML (Qwen base
# models, for instance) would otherwise run on past the end of the answer.
CHATML_END = "<|im_end|>"


class _Generates(Protocol):
    """A transformers model or a peft wrapper: both have `generate`, which nn.Module's type does not know."""

    def generate(self, **kwargs: Any) -> torch.Tensor: ...


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos, the model's generation-config eos and <|im_end|>."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    if CHATML_END in tokenizer.get_vocab():
        candidates.append(tokenizer.convert_tokens_to_ids(CHATML_END))
    for token_id in candidates:
        if token_id is not None and token_id not in ids:
            ids.append(int(token_id))
    return ids


def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[Message]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    system_prompt: str | None = None,
    show_progress: bool = True,
    precision: Precision = "fp32",
) -> list[str]:
    """Greedy answers to `prompts` (conversations ending before the assistant turn), in the order given.

    Prompts are rendered with the chat template plus the generation prompt, sorted by token length and run in
    left-padded batches of `batch_size`. Each answer stops at the first stop token (`stop_token_ids`) and is
    decoded without special tokens and stripped. `precision="bf16"` runs an fp32 model under bf16 autocast (a
    bf16 model needs nothing); batched answers may then differ slightly from one-by-one answers.
    """
    if not prompts:
        return []
    texts = [prompt_text(tokenizer, p, system_prompt) for p in prompts]
    # The template already wrote the special tokens; letting the tokenizer add a BOS again would double it.
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    # Longest first: similar lengths share a batch (less padding), and running out of memory shows up at once.
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    stops = stop_token_ids(model, tokenizer)
    pad = pad_id(tokenizer, stops[0])
    device = _device(model)
    answers: list[str] = [""] * len(texts)
    with _progress(show_progress, len(texts)) as (progress, task), eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            # Left padding keeps every prompt's last token in the last column, where generation continues.
            batch = tokenizer(
                [texts[i] for i in chunk],
                add_special_tokens=False,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            ).to(device)
            with _autocast(model, precision):
                out = cast(_Generates, model).generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    **_greedy_kwargs(max_new_tokens, stops, pad),
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
            for i, ids in zip(chunk, new_tokens, strict=True):
                # One list of ids decodes to one string (decode's type also allows a batch's list of strings).
                answer = cast(str, tokenizer.decode(_cut_at_stop(ids, stops), skip_special_tokens=True))
                answers[i] = answer.strip()
            progress.advance(task, len(chunk))
    return answers


def stream_reply(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    top_p: float = 0.9,
    system_prompt: str | None = None,
    precision: Precision = "fp32",
) -> Iterator[str]:
    """The assistant's reply to `messages`, yielded as text pieces while it is generated.

    Samples with `temperature` and `top_p`; `temperature=0` decodes greedily (the same answer as
    `generate_answers`). Generation runs in a background thread feeding a `TextIteratorStreamer`; an error there
    is raised here once the stream ends. Closing the iterator early (Ctrl-C in a chat) stops generation at the
    next token.
    """
    text = prompt_text(tokenizer, messages, system_prompt)
    batch = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(_device(model))
    stops = stop_token_ids(model, tokenizer)
    pad = pad_id(tokenizer, stops[0])
    if temperature > 0:
        sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}
        kwargs = {"max_new_tokens": max_new_tokens, "eos_token_id": stops, "pad_token_id": pad, **sampling}
    else:
        kwargs = _greedy_kwargs(max_new_tokens, stops, pad)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()
    kwargs["stopping_criteria"] = StoppingCriteriaList([_UntilSet(cancelled)])
    failure: list[BaseException] = []

    def work() -> None:
        # Grad mode and autocast are per thread, so they are entered here, not around the thread's start.
        try:
            with torch.inference_mode(), _autocast(model, precision):
                cast(_Generates, model).generate(**batch, streamer=streamer, **kwargs)
        except BaseException as exc:
            failure.append(exc)
            streamer.end()  # unblocks the reader below, which would otherwise wait forever

    with eval_mode(model):
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            cancelled.set()
            thread.join()
    if failure:
        raise failure[0]


class _UntilSet(StoppingCriteria):
    """Stops generation once `event` is set (the reader went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, done)  # a bool tensor: what transformers' criteria are declared to return


def _greedy_kwargs(max_new_tokens: int, stops: list[int], pad_id: int) -> dict[str, Any]:
    # Sampling settings from the model's generation_config are cleared so greedy decoding does not warn.
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "eos_token_id": stops,
        "pad_token_id": pad_id,
    }


def _cut_at_stop(ids: list[int], stops: list[int]) -> list[int]:
    """The tokens before the first stop token. Rows that finished early are padded, possibly with eos itself."""
    for k, token_id in enumerate(ids):
        if token_id in stops:
            return ids[:k]
    return ids


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(model: nn.Module, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast for an fp32 model when asked; a model already stored in bf16 runs as it is."""
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    if precision == "bf16" and torch.float32 in floating:
        return torch.autocast(_device(model).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _RateColumn(ProgressColumn):
    """Prompts per second (rich's own speed column shows bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} prompts/s" if speed else "- prompts/s", style="progress.data.speed")


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[tuple[Progress, Any]]:
    progress = Progress(
        TextColumn("[bold]generate"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    task = progress.add_task("generate", total=total)
    with progress:
        yield progress, task
