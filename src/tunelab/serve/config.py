"""The server's settings: limits and protection. The CLI flags of `tunelab serve` map one to one onto these."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.models.condense import LongPrompts


@dataclass
class ServeConfig:
    api_keys: list[str] = field(default_factory=list)
    """Accepted `Authorization: Bearer` keys; empty means no authentication (bind to 127.0.0.1 then)."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger ones get 413."""
    max_tokens_limit: int = 1024
    """Largest `max_tokens` a request may ask for; more gets 400."""
    default_max_tokens: int = 256
    """`max_tokens` when a request gives none (capped by the context left after the prompt)."""
    max_batch_size: int = 16
    """Sequences decoded together in one forward pass."""
    max_queue: int = 64
    """Sequences waiting for a batch slot; past that, requests get 429."""
    long_prompts: LongPrompts = "error"
    """A chat prompt with no room left for its answer: 400 (`error`), or answered from the model's notes on the
    parts of its longest message (`hierarchical`, tunelab.models.condense)."""
    request_timeout: float = 120.0
    """Seconds a request may take in all; then 504 (or an error event when streaming)."""
    max_embedding_inputs: int = 256
    """Most texts in one /v1/embeddings request."""
    max_pattern_chars: int = 10_000
    """Longest `regex`, or JSON schema text in `response_format`, a request may send; longer gets 400."""
    max_pattern_repeat: int = 256
    """Largest repetition count in a constraint pattern (`{N}`, `{N,M}`; counts nested inside each other multiply,
    and a JSON schema's maxLength/maxItems become such counts); more gets 400."""
    constraint_timeout: float = 30.0
    """Seconds one new pattern may compile (in a separate process, killed past it); then 400. The wait also
    counts against `request_timeout`."""
    constraint_memory_mb: int = 2048
    """Address space of a compile process in MB; a pattern that needs more gets 400."""
    constraint_workers: int = 2
    """Processes compiling new patterns at once (patterns compiled before are cached and need none)."""
    max_banned_words: int = 256
    """Most `banned_words` one request may send; more gets 400."""
    max_banned_chars: int = 8192
    """Most characters in all of one request's `banned_words` together; more gets 400."""
    body_timeout: float = 30.0
    """Seconds a client may take to send its request body once the headers arrived; then 408."""
    max_connections: int = 256
    """Connections and requests in flight at once (uvicorn's `limit_concurrency`); past that, 503."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Host header names accepted when no API key is set, besides loopback names and the bound address (a web
    page cannot use DNS rebinding to reach a keyless local server); ignored when keys are set."""
