"""Turn an OpenAI completion request into engine sequences, and the engine's events into OpenAI responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
from transformers import PreTrainedTokenizerBase

from tunelab.core.errors import DataError
from tunelab.core.types import Message
from tunelab.models.chat import render
from tunelab.models.condense import Condenser, condense
from tunelab.serve.config import ServeConfig
from tunelab.serve.constraints import ANY_OBJECT_SCHEMA, ConstraintCompiler, ConstraintError
from tunelab.serve.engine import Engine, EngineStoppedError, Event, Handle, QueueFullError, SequenceSpec
from tunelab.serve.errors import APIError
from tunelab.serve.protocol import ChatCompletionRequest, CompletionRequest, GenerationFields
from tunelab.serve.sampling import Constraint, SamplingParams

JSON_OBJECT_SCHEMA = ANY_OBJECT_SCHEMA


@dataclass
class Job:
    """One HTTP request's work: its prompts' token ids and the sequences to generate."""

    kind: str  # "chat.completion" or "text_completion"
    model: str
    prompt_tokens: int
    specs: list[SequenceSpec]
    deadline: float | None = None
    """time.monotonic() by which the request must be answered (set when it arrived, so compiling its constraint
    counts); None: `request_timeout` from when generation starts."""
    arrived: float = field(default_factory=time.monotonic)
    """time.monotonic() when the request arrived, for the latency the traffic log records."""
    response_id: str = ""
    """The id the response carries (`chatcmpl-...`, `cmpl-...`), made when the job is; feedback names it."""

    def __post_init__(self) -> None:
        if not self.response_id:
            prefix = "chatcmpl" if self.kind == "chat.completion" else "cmpl"
            self.response_id = f"{prefix}-{uuid.uuid4().hex[:24]}"


Finished = Callable[[list[str], list[str | None], int], None]
"""Called once a streamed response has ended: each choice's text, finish reasons, completion tokens."""


def chat_messages(body: ChatCompletionRequest) -> list[Message]:
    """The request's conversation (a developer message read as a system one); 400 for what is not supported."""
    if body.tools:
        raise APIError(
            400, "Tool calling is not supported by this server; send the request without `tools`.", param="tools"
        )
    messages = []
    for i, message in enumerate(body.messages):
        if message.role == "tool":
            raise APIError(
                400, "Messages with role 'tool' are not supported (no tool calling).", param=f"messages[{i}]"
            )
        messages.append(Message("system" if message.role == "developer" else message.role, message.text()))
    return messages


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, body: ChatCompletionRequest, messages: list[Message] | None = None
) -> list[int]:
    """The conversation (`messages`, or the request's) rendered with the model's chat template, plus the assistant
    prompt, as token ids."""
    try:
        text = render(tokenizer, messages if messages is not None else chat_messages(body), add_generation_prompt=True)
    except Exception as exc:  # jinja templates raise their own errors for conversations they refuse
        raise APIError(400, f"The model's chat template rejected these messages: {exc}", param="messages") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_prompts(tokenizer: PreTrainedTokenizerBase, body: CompletionRequest) -> list[list[int]]:
    """Each prompt of a /v1/completions request as token ids (text is tokenized with the model's own BOS rules)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError(400, "prompt is empty; give a string, a list of strings or token ids.", param="prompt")
    out = []
    vocab = len(tokenizer)
    for i, p in enumerate(prompts):
        ids = tokenizer(p)["input_ids"] if isinstance(p, str) else list(p)
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt holds token ids outside the vocabulary (0..{vocab - 1}).", param="prompt")
        if not ids:  # nothing to continue from: the model has no logits to sample the first token from
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise APIError(400, f"{where} is empty (no tokens); give some text or token ids.", param="prompt")
        out.append(ids)
    return out


def build_specs(
    body: GenerationFields,
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    config: ServeConfig,
    context_length: int,
    compiler: Callable[[], ConstraintCompiler],
    adapter: str | None,
    response_schema: str | None = None,
    deadline: float | None = None,
) -> list[SequenceSpec]:
    """n sequences per prompt, with max_tokens checked against the limits and the model's context."""
    if body.logprobs:
        raise APIError(400, "logprobs are not supported by this server; leave `logprobs` unset.", param="logprobs")
    wanted = body.wanted_tokens()
    if wanted is not None and wanted > config.max_tokens_limit:
        raise APIError(
            400, f"max_tokens is {wanted}, more than this server's limit of {config.max_tokens_limit}. Ask for fewer.",
            param="max_tokens", code="max_tokens_too_large",
        )  # fmt: skip
    vocab = len(tokenizer)
    bias = {int(k): v for k, v in (body.logit_bias or {}).items()}
    if any(k >= vocab for k in bias):
        raise APIError(400, f"logit_bias names token ids outside the vocabulary (0..{vocab - 1}).", param="logit_bias")
    if len(prompts) * body.n > config.max_queue:
        raise APIError(
            400, f"This request asks for {len(prompts) * body.n} sequences ({len(prompts)} prompts x n={body.n}); "
            f"this server queues at most {config.max_queue}. Send fewer prompts or a lower n.", param="n",
        )  # fmt: skip
    banned = _banned_sequences(tokenizer, _checked_banned_words(body.banned_words or [], config))
    specs = []
    for p, prompt in enumerate(prompts):
        room = context_length - len(prompt)
        if room <= 0 or (wanted is not None and wanted > room):
            raise APIError(
                400, f"This model's context is {context_length} tokens; the prompt has {len(prompt)} and "
                f"max_tokens asks for {wanted or 1} more. Shorten the prompt or lower max_tokens.",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )  # fmt: skip
        for j in range(body.n):
            params = SamplingParams(
                max_tokens=wanted or min(config.default_max_tokens, config.max_tokens_limit, room),
                temperature=body.temperature,
                top_p=body.top_p,
                seed=None if body.seed is None else body.seed + j,
                stop=list(body.stop or []),
                logit_bias=bias,
                banned=banned,
            )
            constraint = _constraint(body, compiler, response_schema, deadline)
            specs.append(SequenceSpec(p * body.n + j, prompt, params, constraint, adapter))
    return specs


def response_schema(body: ChatCompletionRequest) -> str | None:
    """The JSON schema `response_format` asks for, as text (None for plain text)."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JSON_OBJECT_SCHEMA
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise APIError(400, "response_format json_schema needs `json_schema.schema`.", param="response_format")
    return json.dumps(fmt.json_schema.schema_)


def _constraint(
    body: GenerationFields, compiler: Callable[[], ConstraintCompiler], schema: str | None, deadline: float | None
) -> Constraint | None:
    if schema is not None and body.regex:
        raise APIError(400, "Give either response_format or regex, not both.", param="regex")
    try:
        if schema is not None:
            return compiler().json_schema(schema, deadline)
        if body.regex:
            return compiler().regex(body.regex, deadline)
    except ConstraintError as exc:  # 400 for the pattern, 429 when compiles are backed up, 504 past the deadline
        param = "regex" if body.regex else "response_format"
        raise APIError(exc.status, str(exc), param=param, code=exc.code) from None
    return None


def _checked_banned_words(words: list[str], config: ServeConfig) -> list[str]:
    chars = sum(len(w) for w in words)
    if len(words) > config.max_banned_words or chars > config.max_banned_chars:
        raise APIError(
            400, f"banned_words holds {len(words)} words of {chars} characters in all; this server takes at most "
            f"{config.max_banned_words} words and {config.max_banned_chars} characters.", param="banned_words",
        )  # fmt: skip
    return words


def _banned_sequences(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[list[int]]:
    # A word can be spelled by several tokenizations; block the usual ones: bare, after a space, capitalised.
    variants = sorted({v for w in words if w for v in (w, f" {w}", w.capitalize(), f" {w.capitalize()}")})
    if not variants:
        return []
    encoded = tokenizer(variants, add_special_tokens=False)["input_ids"]  # one call for all of them
    return [list(ids) for ids in dict.fromkeys(tuple(ids) for ids in encoded if ids)]


def fit_chat_prompt(
    engine: Engine,
    body: ChatCompletionRequest,
    prompt: list[int],
    config: ServeConfig,
    adapter: str | None,
    deadline: float,
) -> list[int]:
    """`prompt`, or with `long_prompts: hierarchical` and no room left for the answer (what `build_specs` refuses),
    the prompt of the request's conversation condensed from the model's own notes (greedy, through the engine) to
    leave room for `max_tokens` (or the default answer length). Runs in a worker thread: the notes are generated on
    the event loop (anyio.from_thread), the long text is tokenized here."""
    wanted = body.wanted_tokens()
    if config.long_prompts != "hierarchical" or len(prompt) + (wanted or 1) <= engine.context_length:
        return prompt
    answer = wanted or min(config.default_max_tokens, config.max_tokens_limit)
    condenser = Condenser(engine.tokenizer, engine.context_length - answer)

    async def notes(asks: list[list[Message]]) -> list[str]:
        params = SamplingParams(max_tokens=condenser.note_tokens, temperature=0.0)
        ids = [chat_prompt(engine.tokenizer, body, ask) for ask in asks]
        handle = submit(engine, [SequenceSpec(k, p, params, None, adapter) for k, p in enumerate(ids)])
        texts = [""] * len(ids)
        async with contextlib.aclosing(events(handle, len(ids), deadline)) as stream_:
            async for event in stream_:
                if event.error:
                    raise APIError(event.error_status, event.error, code="generation_failed")
                texts[event.index] += event.text
        return texts

    try:
        done = condense(condenser, chat_messages(body), lambda asks: anyio.from_thread.run(notes, asks))
    except DataError as exc:
        raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
    except TimeoutError:
        raise APIError(
            504, f"Taking notes on the long prompt took longer than {config.request_timeout:.0f}s; send a shorter one."
        ) from None
    return chat_prompt(engine.tokenizer, body, done.messages)


def submit(engine: Engine, specs: list[SequenceSpec]) -> Handle:
    handle = Handle(asyncio.get_running_loop())
    try:
        engine.submit(specs, handle)
    except QueueFullError as exc:
        raise APIError(429, f"The server is busy ({exc}). Retry after a short wait.", code="queue_full") from None
    except EngineStoppedError:
        raise APIError(503, "The generation engine has stopped; restart the server.", code="engine_stopped") from None
    return handle


async def events(handle: Handle, count: int, deadline: float) -> AsyncGenerator[Event, None]:
    """The events of `count` sequences until each has finished; raises TimeoutError past `deadline`."""
    open_ = count
    try:
        while open_:
            event = await asyncio.wait_for(handle.events.get(), timeout=max(0.0, deadline - time.monotonic()))
            if event.finish_reason is not None:
                open_ -= 1
            yield event
    finally:
        if open_:
            handle.cancel()


async def complete(engine: Engine, job: Job, config: ServeConfig) -> dict:
    """The whole response body for a non-streaming request."""
    handle = submit(engine, job.specs)
    texts = [""] * len(job.specs)
    reasons: list[str | None] = [None] * len(job.specs)
    tokens = [0] * len(job.specs)
    try:
        async with contextlib.aclosing(events(handle, len(job.specs), _deadline(job, config))) as stream_:
            async for event in stream_:
                if event.error:  # the message names a log id, never the exception's text
                    raise APIError(event.error_status, event.error, code="generation_failed")
                texts[event.index] += event.text
                tokens[event.index] = event.completion_tokens
                reasons[event.index] = event.finish_reason or reasons[event.index]
    except TimeoutError:
        raise APIError(
            504, f"Generation took longer than {config.request_timeout:.0f}s; ask for fewer tokens."
        ) from None
    choices = []
    for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
        if job.kind == "chat.completion":
            message = {"role": "assistant", "content": text, "refusal": None}
            choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": None})
        else:
            choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
    return {**_envelope(job), "choices": choices, "usage": _usage(job, sum(tokens))}


async def stream(
    engine: Engine, job: Job, config: ServeConfig, include_usage: bool, finished: Finished | None = None
) -> AsyncIterator[str]:
    """Server-sent events for a streaming request, ending with `data: [DONE]`; `finished` hears what was sent."""
    handle = submit(engine, job.specs)
    texts = [""] * len(job.specs)
    reasons: list[str | None] = [None] * len(job.specs)
    tokens = [0] * len(job.specs)

    async def body() -> AsyncIterator[str]:
        head = _envelope(job, chunk=True)
        if job.kind == "chat.completion":
            for spec in job.specs:
                yield _sse({**head, "choices": [_chunk_choice(job, spec.index, "", None, role=True)]})
        try:
            async with contextlib.aclosing(events(handle, len(job.specs), _deadline(job, config))) as stream_:
                async for event in stream_:
                    if event.error:
                        yield _sse(APIError(event.error_status, event.error, code="generation_failed").body())
                        break
                    tokens[event.index] = event.completion_tokens
                    texts[event.index] += event.text
                    reasons[event.index] = event.finish_reason or reasons[event.index]
                    if event.text or event.finish_reason:
                        choice = _chunk_choice(job, event.index, event.text, event.finish_reason)
                        yield _sse({**head, "choices": [choice]})
        except TimeoutError:
            yield _sse(APIError(504, f"Generation took longer than {config.request_timeout:.0f}s.").body())
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(job, sum(tokens))})
        yield "data: [DONE]\n\n"

    async def guarded() -> AsyncIterator[str]:
        try:
            async for piece in body():
                yield piece
            if finished is not None:
                finished(texts, reasons, sum(tokens))
        finally:
            handle.cancel()  # the client went away or the stream ended: stop generating either way

    return guarded()


def _deadline(job: Job, config: ServeConfig) -> float:
    return job.deadline if job.deadline is not None else time.monotonic() + config.request_timeout


def _chunk_choice(job: Job, index: int, text: str, reason: str | None, role: bool = False) -> dict:
    if job.kind == "chat.completion":
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def _envelope(job: Job, chunk: bool = False) -> dict:
    obj = job.kind + (".chunk" if chunk and job.kind == "chat.completion" else "")
    return {"id": job.response_id, "object": obj, "created": int(time.time()), "model": job.model}


def _usage(job: Job, completion_tokens: int) -> dict:
    total = job.prompt_tokens + completion_tokens
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
