"""The server's front door, as pure ASGI middleware: API keys, the Host header, the Content-Length limit, and
metrics timed to the last byte sent.

The Host check is for a server without API keys, which relies on being reachable from this machine only. A web
page the user visits can still send it requests (the browser is on this machine), and with DNS rebinding (the
page's own name re-pointed to 127.0.0.1) it can read the answers too. Such requests carry the page's host name
in `Host`, so a keyless server answers only requests whose Host is a loopback name or address, the address the
connection arrived on, or a name the operator allowed. A server with keys needs no such check: a page does not
have the key.

The review page (`/review`) is opened in a browser, which cannot send a Bearer header: it also takes HTTP Basic
credentials with an API key as the password, and its 401 asks the browser for them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.serve.config import ServeConfig
from tunelab.serve.errors import APIError
from tunelab.serve.metrics import ServerMetrics

ROUTES = (
    "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/health", "/metrics", "/openapi.json",
    "/v1/feedback", "/review", "/v1/admin/reload",
)  # fmt: skip
BROWSER_ROUTES = ("/review",)
OPEN_ROUTES = ("/health", "/metrics")
LOOPBACK_NAMES = ("localhost",)


class Guard:
    """Checks every request before the app sees it, and records its status and latency once it is answered."""

    def __init__(self, app: ASGIApp, config: ServeConfig, metrics: ServerMetrics) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else ("/v1/models/{name}" if path.startswith("/v1/models/") else "other")
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.observe(route, status, time.perf_counter() - started)

        rejection = self._reject(scope, path)
        if rejection is not None:
            response = rejection.response()
            if rejection.status == 401 and path in BROWSER_ROUTES:
                response.headers["WWW-Authenticate"] = 'Basic realm="tunelab review"'
            await response(scope, receive, timed_send)
            return
        await self.app(scope, receive, timed_send)

    def _reject(self, scope: Scope, path: str) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        keys = self.config.api_keys
        if keys and path not in OPEN_ROUTES:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = _presented_key(auth, path in BROWSER_ROUTES)
            # compare_digest: the time taken does not reveal how much of a key was right. An empty token never
            # matches, even if an empty key slipped into the configuration.
            if not token or not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys if key):
                what = "Invalid API key" if token else "Missing API key"
                return APIError(401, f"{what}. Send it as `Authorization: Bearer KEY`.", code="invalid_api_key")
        if not keys and b"host" in headers:
            host = headers[b"host"].decode("latin-1")
            if not host_allowed(host, scope, self.config.allowed_hosts):
                return APIError(
                    421, f"This server answers requests for loopback names only, not for Host '{host[:100]}' "
                    "(it has no API key, so requests from web pages are refused). Use http://127.0.0.1:PORT, "
                    "or start it with --allow-host NAME or an --api-key.",
                    code="host_not_allowed",
                )  # fmt: skip
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.config.max_body_bytes:
            limit = self.config.max_body_bytes
            return APIError(413, f"Request body is larger than {limit} bytes.", code="body_too_large")
        return None


def _presented_key(auth: str, basic: bool) -> str:
    """The key in an `Authorization` header: a Bearer token, or (where `basic`) the password of Basic credentials."""
    if auth.lower().startswith("bearer "):
        return auth[7:]
    if basic and auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def host_allowed(host: str, scope: Scope, allowed: list[str]) -> bool:
    """Whether the `Host` header names this server: a loopback name or address, the address the connection
    arrived on (`scope["server"]`), or one of `allowed`."""
    name = _host_name(host)
    if name in LOOPBACK_NAMES or name in {_host_name(a) for a in allowed}:
        return True
    server = scope.get("server")
    if server and name == _host_name(str(server[0])):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """`host` without its port, brackets or trailing dot, lower-cased: "[::1]:8000" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")
