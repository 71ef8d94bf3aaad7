"""The OpenAI-compatible HTTP API (FastAPI): models, chat and text completions, embeddings, health, metrics.

Bodies are read and validated here rather than by FastAPI's automatic parsing, so that every failure (bad JSON,
wrong types, oversize bodies) gets OpenAI's error shape and status instead of FastAPI's 422 layout. A body must
be sent as `application/json` (a web page can send other types to any server without asking the browser first)
and within `body_timeout`. Rendering the chat template and tokenising run in worker threads: a prompt of a
megabyte takes a second to tokenise, and the event loop keeps answering other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.recipes.monitor.store import LoggedRequest
from tunelab.serve.adapters import Adapters
from tunelab.serve.config import ServeConfig
from tunelab.serve.constraints import ConstraintCompiler
from tunelab.serve.embeddings import Embedder
from tunelab.serve.engine import Engine
from tunelab.serve.errors import APIError, internal_error
from tunelab.serve.feedback import FeedbackRequest, submit_feedback
from tunelab.serve.generation import (
    Job,
    build_specs,
    chat_prompt,
    complete,
    completion_prompts,
    fit_chat_prompt,
    response_schema,
    stream,
)
from tunelab.serve.guard import Guard
from tunelab.serve.metrics import ServerMetrics
from tunelab.serve.openapi import openapi_document
from tunelab.serve.promotion import reload_champion
from tunelab.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, GenerationFields
from tunelab.serve.review import Reviews
from tunelab.serve.traffic import TrafficLog, logged_request

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


@dataclass
class ServerState:
    """Everything the routes use. `engine`/`adapters` serve a causal LM; `embedder` serves an encoder."""

    config: ServeConfig
    metrics: ServerMetrics
    engine: Engine | None = None
    adapters: Adapters | None = None
    embedder: Embedder | None = None
    embedding_name: str | None = None
    traffic: TrafficLog | None = None
    """The traffic log (`serve --log`): answers, feedback and review ratings go there."""
    champion: Path | None = None
    """The champion pointer (`serve --champion`) that POST /v1/admin/reload reads."""
    champion_name: str | None = None
    """The served adapter name a reload re-points to the champion's adapter."""
    created: int = field(default_factory=lambda: int(time.time()))
    _compiler: ConstraintCompiler | None = None
    _compiler_lock: threading.Lock = field(default_factory=threading.Lock)

    def compiler(self) -> ConstraintCompiler:
        with self._compiler_lock:  # request threads ask at once: one compiler (and one process pool) per server
            if self._compiler is None:
                assert self.engine is not None
                # The guide ends output with this token, which the engine treats as a stop.
                tokenizer = self.engine.tokenizer
                eos = tokenizer.eos_token_id if tokenizer.eos_token_id in self.engine.stops else min(self.engine.stops)
                self._compiler = ConstraintCompiler(tokenizer, eos, self.config)
            return self._compiler

    def close(self) -> None:
        """Stop the engine and the constraint compile workers (the server has stopped taking requests)."""
        if self.engine:
            self.engine.stop()
        if self.traffic:
            self.traffic.close()
        with self._compiler_lock:
            if self._compiler is not None:
                self._compiler.close()
                self._compiler = None

    def generator_names(self) -> list[str]:
        """The served causal LMs: the base model and its adapters."""
        return self.adapters.names() if self.adapters else []

    def model_names(self) -> list[str]:
        names = self.adapters.names() if self.adapters else []
        return names + ([self.embedding_name] if self.embedding_name else [])


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application for `state` (run it with uvicorn)."""
    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tunelab = state
    app.add_middleware(Guard, config=state.config, metrics=state.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"No route {request.method} {request.url.path}.", 405: "Method not allowed on this route."}
        return APIError(exc.status_code, message.get(exc.status_code, str(exc.detail))).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return internal_error("Internal server error", exc).response()

    @app.get("/health")
    async def health() -> dict:
        engine = state.engine
        if engine is not None and not engine.alive:  # requests would wait for a worker that is gone
            raise APIError(503, "The generation engine has stopped; restart the server.", code="engine_stopped")
        queued, running = (engine.queue_depth, engine.active_count) if engine else (0, 0)
        return {"status": "ok", "models": state.model_names(), "queue_depth": queued, "running": running}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict:
        return openapi_document(app)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(state, name) for name in state.model_names()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict:
        if name not in state.model_names():
            raise APIError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")
        return _model_card(state, name)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> dict | StreamingResponse:
        arrived = time.monotonic()
        deadline = arrived + state.config.request_timeout  # compiling a constraint counts too
        body = await _read(request, ChatCompletionRequest, state.config)
        engine, adapter = await _generator(state, body.model)
        prompt = await anyio.to_thread.run_sync(
            lambda: fit_chat_prompt(engine, body, chat_prompt(engine.tokenizer, body), state.config, adapter, deadline)
        )
        schema = response_schema(body)
        # In a worker thread: a new JSON schema waits for its compile (in a separate process; seconds for large
        # schemas on a large vocabulary), and the event loop must keep serving other requests meanwhile.
        specs = await anyio.to_thread.run_sync(
            lambda: build_specs(
                body, [prompt], engine.tokenizer, state.config, engine.context_length, state.compiler, adapter, schema,
                deadline,
            )
        )  # fmt: skip
        job = Job("chat.completion", body.model, len(prompt), specs, deadline, arrived)
        return await _respond(request, state, engine, job, body)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> dict | StreamingResponse:
        arrived = time.monotonic()
        deadline = arrived + state.config.request_timeout
        body = await _read(request, CompletionRequest, state.config)
        engine, adapter = await _generator(state, body.model)
        if body.echo or body.suffix:
            raise APIError(400, "`echo` and `suffix` are not supported; leave them unset.", param="echo")
        prompts = await anyio.to_thread.run_sync(completion_prompts, engine.tokenizer, body)
        specs = await anyio.to_thread.run_sync(
            lambda: build_specs(
                body, prompts, engine.tokenizer, state.config, engine.context_length, state.compiler, adapter,
                deadline=deadline,
            )
        )  # fmt: skip
        job = Job("text_completion", body.model, sum(len(p) for p in prompts), specs, deadline, arrived)
        return await _respond(request, state, engine, job, body)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        body = await _read(request, EmbeddingRequest, state.config)
        embedder = _embedder(state, body.model)
        embedder.check_ids(body.input)
        inputs = _embedding_inputs(body.input)
        if not inputs or len(inputs) > state.config.max_embedding_inputs:
            limit = state.config.max_embedding_inputs
            raise APIError(400, f"input must hold 1 to {limit} items; got {len(inputs)}.", param="input")
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise APIError(400, f"This model's embeddings have {embedder.dimensions} dimensions.", param="dimensions")
        vectors, tokens = await anyio.to_thread.run_sync(embedder.embed, inputs)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": body.model, "usage": usage}

    _feedback_routes(app, state)

    @app.post("/v1/admin/reload")
    async def reload() -> dict:
        return await reload_champion(state)

    return app


def _feedback_routes(app: FastAPI, state: ServerState) -> None:
    """POST /v1/feedback and the review page, which need the traffic log."""
    reviews = Reviews(state.traffic, _review_answer(state), state.generator_names) if state.traffic else None

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict:
        body = await _read(request, FeedbackRequest, state.config)
        return await submit_feedback(body, _traffic(state))

    @app.get("/review", response_class=HTMLResponse)
    async def review_page(a: str | None = None, b: str | None = None) -> Response:
        _traffic(state)
        assert reviews is not None
        return await reviews.page(a, b)

    @app.post("/review", response_class=HTMLResponse)
    async def review_rate(request: Request) -> Response:
        _traffic(state)
        assert reviews is not None
        chunks: list[bytes] = []
        await _receive_body(request, chunks, state.config.max_body_bytes)
        return await reviews.rate(b"".join(chunks))


def _traffic(state: ServerState) -> TrafficLog:
    if state.traffic is None:
        raise APIError(
            400, "This server keeps no traffic log, so it takes no feedback; start it with --log DB.",
            code="log_not_enabled",
        )  # fmt: skip
    return state.traffic


def _review_answer(state: ServerState):
    """The review page's generator: model `name`'s greedy answer to a logged request."""

    async def answer(name: str, logged: LoggedRequest) -> str:
        # No max_tokens: the server's default, capped by the context the prompt leaves.
        if logged.kind == "chat":
            chat = ChatCompletionRequest(model=name, messages=logged.messages, temperature=0)
            engine, adapter = await _generator(state, name)
            prompts = [await anyio.to_thread.run_sync(chat_prompt, engine.tokenizer, chat)]
            body: GenerationFields = chat
        else:
            body = CompletionRequest(model=name, prompt=logged.messages[0], temperature=0)
            engine, adapter = await _generator(state, name)
            prompts = await anyio.to_thread.run_sync(completion_prompts, engine.tokenizer, body)
        tokenizer, context = engine.tokenizer, engine.context_length
        specs = build_specs(body, prompts, tokenizer, state.config, context, state.compiler, adapter)
        kind = "chat.completion" if logged.kind == "chat" else "text_completion"
        reply = await complete(engine, Job(kind, name, len(prompts[0]), specs), state.config)
        choice = reply["choices"][0]
        return choice["message"]["content"] if logged.kind == "chat" else choice["text"]

    return answer


def _embedding_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    """An embedding request's inputs as a list: one text, or one list of token ids, is a list of one."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [cast(list[int], value)]
    return cast(list[str] | list[list[int]], value)


async def _respond(
    request: Request, state: ServerState, engine: Engine, job: Job, body: GenerationFields
) -> dict | StreamingResponse:
    if state.metrics:
        state.metrics.prompt_tokens.inc(job.prompt_tokens)
    traffic = state.traffic

    def finished(texts: list[str], reasons: list[str | None], tokens: int) -> None:
        if traffic is not None:
            traffic.record(logged_request(body, job, texts, reasons, tokens, engine.tokenizer))

    if body.stream:  # StreamingResponse stops the stream (and so the generation) when the client disconnects
        chunks = await stream(engine, job, state.config, body.include_usage_in_stream(), finished)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    reply = await _unless_disconnected(request, complete(engine, job, state.config))
    choices = reply["choices"]
    texts = [c["message"]["content"] if "message" in c else c["text"] for c in choices]
    finished(texts, [c["finish_reason"] for c in choices], reply["usage"]["completion_tokens"])
    return reply


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, R]) -> R:
    """Await `work`, cancelling it if the client disconnects first (its generation stops at the next step)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()  # a no-op for the one that finished
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # let the cancelled request release its sequences before answering
    raise APIError(499, "The client closed the connection before the answer was ready.", code="client_closed")


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _generator(state: ServerState, model: str) -> tuple[Engine, str | None]:
    if state.engine is None or state.adapters is None:
        raise APIError(
            400, f"'{model}' is an embedding model; it answers POST /v1/embeddings, not completions.", param="model"
        )
    if model == state.embedding_name:
        raise APIError(400, f"'{model}' is an embedding model; use POST /v1/embeddings.", param="model")
    return state.engine, await state.adapters.resolve(model)


def _embedder(state: ServerState, model: str) -> Embedder:
    if state.embedder is None:
        raise APIError(
            400, "This server has no embedding model; start it with --embedding-model (e.g. minilm-l6).", param="model"
        )
    if model != state.embedding_name:
        raise APIError(
            404, f"The embedding model '{model}' does not exist; this server embeds with '{state.embedding_name}'.",
            param="model", code="model_not_found",
        )  # fmt: skip
    return state.embedder


def _model_card(state: ServerState, name: str) -> dict:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "tunelab"}


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


async def _read(request: Request, schema: type[T], config: ServeConfig) -> T:
    """The JSON body as `schema`; 415 unless sent as JSON, 408 if it arrives too slowly, 413 past the size
    limit, 400 for bad JSON or wrong fields."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise APIError(
            415, f"Send the request body as JSON with `Content-Type: application/json` (got '{kind[:100] or 'none'}').",
            code="unsupported_media_type",
        )  # fmt: skip
    chunks: list[bytes] = []
    try:
        with anyio.fail_after(config.body_timeout):
            await _receive_body(request, chunks, config.max_body_bytes)
    except TimeoutError:
        raise APIError(
            408, f"The request body did not arrive within {config.body_timeout:.0f}s.", code="body_timeout"
        ) from None
    try:
        data = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise APIError(400, "The request body nests too deeply to read.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        more = f" ({exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise APIError(400, f"Invalid value for '{param}': {first['msg']}{more}.", param=param) from None


async def _receive_body(request: Request, chunks: list[bytes], limit: int) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"Request body is larger than {limit} bytes.", code="body_too_large")
        chunks.append(chunk)
