"""HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` for every 4xx and 5xx.

Clients (the official `openai` package first) map the status to an exception class and show `message`, so each
message says what was wrong with the request and how to fix it, like a `TunelabError` does on the CLI.
"""

from __future__ import annotations

import logging
import uuid

from fastapi.responses import JSONResponse

log = logging.getLogger("tunelab.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answer: HTTP `status` with an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        if self.status == 429:
            headers = {"Retry-After": "1"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_id() -> str:
    """A short id that ties an answer to its log lines (`err-` and 12 hex digits)."""
    return f"err-{uuid.uuid4().hex[:12]}"


def internal_error(what: str, exc: BaseException, *, code: str = "internal_error") -> APIError:
    """A 500 for a bug: the exception and its traceback go to the server log under a fresh id; the client gets
    the id only, never the exception's text or file paths (they describe the server, not the request)."""
    ident = error_id()
    log.error("%s [%s]", what, ident, exc_info=exc)
    return APIError(500, f"{what} (error id {ident}); the server log has the details.", code=code)
