"""A small client for a running tunelab (or any OpenAI-compatible) server: streamed chat for `tunelab chat --url`.

Standard library only (urllib), so the CLI needs no HTTP client package to talk to a server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from tunelab.core.errors import TunelabError
from tunelab.core.types import Message


class RemoteError(TunelabError):
    """The server could not be reached or answered with an error."""


def stream_remote_reply(
    url: str,
    model: str,
    messages: list[Message],
    *,
    max_tokens: int = 512,
    temperature: float = 0.7,
    system_prompt: str | None = None,
    api_key: str | None = None,
    timeout: float = 300.0,
) -> Iterator[str]:
    """The assistant's reply from the server at `url` (e.g. http://127.0.0.1:8000), as streamed text pieces."""
    chat = [{"role": m.role, "content": m.content} for m in messages]
    if system_prompt and not (chat and chat[0]["role"] == "system"):
        chat.insert(0, {"role": "system", "content": system_prompt})
    body = {"model": model, "messages": chat, "max_tokens": max_tokens, "temperature": temperature, "stream": True}
    endpoint = url.rstrip("/") + ("/chat/completions" if url.rstrip("/").endswith("/v1") else "/v1/chat/completions")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise RemoteError(f"The server at {url} answered {exc.code}: {_message(exc.read())}") from None
    except urllib.error.URLError as exc:
        raise RemoteError(f"Cannot reach a server at {url} ({exc.reason}). Is `tunelab serve` running there?") from None
    with response:
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise RemoteError(f"The server failed mid-answer: {chunk['error'].get('message')}")
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    yield piece


def _message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500]
